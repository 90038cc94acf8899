"""`trtllm-build` command lines: every flag and value checked against the targeted release's flag set."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from nemo_trt.build.engine import trtllm_build_command
from nemo_trt.build.planner import make_plan
from nemo_trt.build.profiles import VARIANTS, list_profiles
from nemo_trt.build.spec import ModelSpec
from nemo_trt.build.trtllm_target import TARGET_VERSION, load_target
from nemo_trt.errors import NemoTrtError
from nemo_trt.model_facts import resolve_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def spec():
    return ModelSpec.from_path(resolve_model(None))


def all_plans(spec):
    for profile in list_profiles():
        for precision in profile.precisions:
            for variant in VARIANTS:
                yield profile, make_plan(spec, profile, precision=precision, variant=variant)


def as_dict(argv):
    out, i = {}, 1
    while i < len(argv):
        out[argv[i][2:]] = argv[i + 1]
        i += 2
    return out


def test_target_pairing_is_the_documented_one():
    t = load_target()
    assert t.version == TARGET_VERSION == "0.20.0"
    # Triton compatibility matrix: 25.06-trtllm-python-py3 ships TensorRT-LLM 0.20.0 on TensorRT 10.10.0.31
    assert t.container_image == "nvcr.io/nvidia/tritonserver:25.06-trtllm-python-py3"
    assert t.tensorrt_version == "10.10.0.31"
    assert "latest" not in t.container_image


def test_pyproject_gpu_extra_pins_the_target():
    gpu = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    pins = [d for d in gpu if d.replace("_", "-").startswith("tensorrt-llm")]
    assert pins == [f"tensorrt-llm=={TARGET_VERSION}"]


def test_every_plan_gives_a_valid_command(spec):
    target = load_target()
    seen_flags = set()
    for profile, plan in all_plans(spec):
        argv = trtllm_build_command(plan, "/ckpt", "/engines")
        target.validate_argv(argv[1:])  # also done inside; asserted here so a refactor cannot drop it
        flags = as_dict(argv)
        seen_flags |= set(flags)
        b = plan.build
        assert argv[0] == "trtllm-build"
        assert flags["checkpoint_dir"] == "/ckpt" and flags["output_dir"] == "/engines"
        assert flags["max_beam_width"] == "1" and flags["kv_cache_type"] == "paged"
        assert flags["workers"] == str(plan.tp * plan.pp) == str(plan.world_size)
        assert int(flags["max_num_tokens"]) == b.max_num_tokens
        assert int(flags["max_seq_len"]) == b.max_seq_len >= int(flags["max_input_len"])
        # KV-cache reuse and chunked context (set in the Triton config) need paged context FMHA
        if b.enable_kv_cache_reuse or b.enable_chunked_context:
            assert flags["use_paged_context_fmha"] == "enable"
        if plan.precision == "fp8":
            assert flags["use_fp8_context_fmha"] == "enable", profile.name
            assert flags["gemm_plugin"] in ("fp8", "disable", "auto")
        else:
            assert flags["use_fp8_context_fmha"] == "disable"
            assert flags["gemm_plugin"] in ("auto", "bfloat16")
        assert flags["reduce_fusion"] == ("enable" if b.reduce_fusion else "disable")
        assert flags["reduce_fusion"] == "disable"  # DeciLMForCausalLM: the 0.20 builder would drop it
        assert "opt_num_tokens" not in flags  # trtllm-build rejects it with --multiple_profiles enable
    assert seen_flags <= set(target.flags)


def test_flag_set_rejects_typos_removed_flags_and_bad_values():
    t = load_target()
    with pytest.raises(NemoTrtError, match="does not exist in TensorRT-LLM 0.20.0"):
        t.validate_argv(["--use_paged_context_fmah", "enable"])
    with pytest.raises(NemoTrtError, match="does not exist"):
        t.validate_argv(["--max_output_len", "1024"])  # removed in favour of --max_seq_len
    with pytest.raises(NemoTrtError, match="expects one of"):
        t.validate_argv(["--kv_cache_type", "pagd"])
    with pytest.raises(NemoTrtError, match="expects one of"):
        t.validate_argv(["--gemm_plugin", "fp16"])
    with pytest.raises(NemoTrtError, match="integer"):
        t.validate_argv(["--max_batch_size", "many"])
    with pytest.raises(NemoTrtError, match="needs a value"):
        t.validate_argv(["--max_batch_size", "--workers", "2"])
    with pytest.raises(NemoTrtError, match="given twice"):
        t.validate_argv(["--workers", "2", "--workers", "2"])
    with pytest.raises(NemoTrtError, match="rejects"):
        t.validate_argv(["--multiple_profiles", "enable", "--opt_num_tokens", "64"])
    t.validate_argv(["--strip_plan", "--kv_cache_type", "paged"])


def test_inconsistent_settings_are_refused(spec):
    profile = next(p for p in list_profiles() if p.name == "h100x2")
    bf16 = make_plan(spec, profile, precision="bf16")
    fp8 = make_plan(spec, profile, precision="fp8")
    trtllm_build_command(fp8, "/c", "/e")
    def with_build(plan, **update):
        return plan.model_copy(update={"build": plan.build.model_copy(update=update)})

    cases = [
        (with_build(bf16, use_fp8_context_fmha=True), "FP8 context"),
        (with_build(bf16, gemm_plugin="fp8"), "gemm_plugin fp8"),
        (fp8.model_copy(update={"kv_cache_dtype": "bf16"}), "FP8 context"),
        (with_build(bf16, reduce_fusion=True), "reduce_fusion from True to False"),  # DeciLM: builder drops it
        (with_build(bf16, reduce_fusion=True).model_copy(update={"tp": 1, "world_size": 1}), "no all-reduce"),
        (with_build(fp8, use_fp8_context_fmha=False), "FP8 Context FMHA is enabled to support FP8 Paged"),
        (with_build(bf16, max_num_tokens=10 ** 8), "max_num_tokens from 100000000 to"),
        (bf16.model_copy(update={"world_size": 4}), "world size"),
        (with_build(bf16, max_input_len=40000), "max_input_len"),
        (bf16.model_copy(update={"build": bf16.build.model_copy(
            update={"use_paged_context_fmha": False, "max_num_tokens": 1024})}), "paged context FMHA"),
        (bf16.model_copy(update={"build": bf16.build.model_copy(update={"max_beam_width": 4})}), "max_beam_width"),
    ]
    for plan, match in cases:
        with pytest.raises(NemoTrtError, match=match):
            trtllm_build_command(plan, "/c", "/e")
    with pytest.raises(NemoTrtError, match="--workers 3"):
        trtllm_build_command(bf16, "/c", "/e", workers=3)
    assert as_dict(trtllm_build_command(bf16, "/c", "/e", workers=1))["workers"] == "1"
