"""`ensemble_tokens`: the ensemble without its postprocessing step — token ids out, text made
where the stream is consumed.

Why a second ensemble: on the Triton cores our images run (before core #466: 2.51 here,
2.59 in 25.06), a step after the decoupled `tensorrt_llm` can only be batched at the price
of leaking every stream a client drops (model_repository/postprocessing/config.pbtxt), so
`postprocessing` runs once per token and costs more server CPU per token than the stock
batched one (bench/results/serving_stock.md). Clients that can turn ids into text
themselves (the OpenAI gateway, nemo_trt.serve.client, anything with `tokenizers`) call
this model instead: preprocessing -> tensorrt_llm, no Python step per token, and the text
is exact (nemo_trt.serve.postprocess.TextStream: incremental detokenization + reasoning
split, with the final response visible to flush a cut character). Stock clients keep the
`ensemble` and its `text_output`.

Derived from the written `ensemble` config, not a template of its own, so the two can never
disagree on inputs, preprocessing wiring or the repository identity.
"""
from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

TOKEN_ENSEMBLE = "ensemble_tokens"
# tensorrt_llm outputs this ensemble returns: the ids of each response and their count, plus
# whatever the text ensemble already passes straight through from tensorrt_llm.
TOKEN_OUTPUTS = ("output_ids", "sequence_length")


def token_ids(raw_outputs: Mapping[str, bytes]) -> list[int]:
    """The new ids of one `ensemble_tokens` response from its raw output contents:
    output_ids (beam 0, INT32) cut to sequence_length, as tensorrt_llm pads a non-streamed one."""
    ids = struct.unpack_from(f"<{len(raw_outputs.get('output_ids', b'')) // 4}i", raw_outputs.get("output_ids", b""))
    length = raw_outputs.get("sequence_length", b"")
    return list(ids[:max(0, struct.unpack_from("<i", length)[0])] if len(length) >= 4 else ids)


def token_ensemble_config(ensemble: Any, tensorrt_llm: Any) -> Any:
    """The `ensemble` ModelConfig -> the `ensemble_tokens` ModelConfig (a new protobuf)."""
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig()
    config.CopyFrom(ensemble)
    config.name = TOKEN_ENSEMBLE
    steps = [s for s in ensemble.ensemble_scheduling.step if s.model_name != "postprocessing"]
    del config.ensemble_scheduling.step[:]
    config.ensemble_scheduling.step.extend(steps)
    (llm_step,) = [s for s in config.ensemble_scheduling.step if s.model_name == "tensorrt_llm"]
    llm_outputs = {t.name: t for t in tensorrt_llm.output}
    # tensorrt_llm outputs that only postprocessing read (underscore tensors) are no longer mapped
    passthrough = {key: tensor for key, tensor in llm_step.output_map.items() if not tensor.startswith("_")}
    llm_step.output_map.clear()
    for name in TOKEN_OUTPUTS:
        llm_step.output_map[name] = name
    llm_step.output_map.update(passthrough)
    kept = [o for o in config.output if o.name in passthrough.values()]
    del config.output[:]
    for name in TOKEN_OUTPUTS:
        source = llm_outputs[name]
        config.output.add(name=name, data_type=source.data_type, dims=list(source.dims))
    config.output.extend(kept)
    return config


HEADER = """\
# nemo-trt ensemble_tokens: preprocessing -> tensorrt_llm, token ids out (output_ids
# [beams, tokens] and sequence_length per response, as tensorrt_llm sends them). The same
# inputs as `ensemble`, without its per-token Python step: the client turns ids into text
# (nemo_trt.serve.postprocess.TextStream; the OpenAI gateway does). Written by
# nemo_trt.serve.repo_writer from ensemble/config.pbtxt (nemo_trt.serve.token_ensemble).
"""


def token_ensemble_text(config: Any) -> str:
    from google.protobuf import text_format

    return HEADER + text_format.MessageToString(config)
