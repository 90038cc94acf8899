"""TensorRT-LLM 0.20 builder rules (configs/trtllm/0.20.0.yaml builder_rules; build/builder_rules.py):
each rule against the builder.py / _common.py logic it encodes, and the guard on the engine command."""
from __future__ import annotations

from dataclasses import replace

import pytest

from nemo_trt.build.builder_rules import (
    RULES,
    BuilderInputs,
    apply_builder_rules,
    check_settings,
    load_builder_rules,
    sm_version,
)
from nemo_trt.errors import NemoTrtError

DECI = BuilderInputs(architecture="DeciLMForCausalLM", tp=2, quant_algo=None, kv_cache_quant_algo=None, sm=90,
                     max_batch_size=256, max_input_len=16384, max_seq_len=32768, max_num_tokens=8192,
                     tokens_per_block=32, use_paged_context_fmha=True, use_fp8_context_fmha=False, reduce_fusion=False)
FP8 = replace(DECI, quant_algo="FP8", kv_cache_quant_algo="FP8", use_fp8_context_fmha=True)


def changes(inputs: BuilderInputs) -> dict[str, tuple]:
    return {o.setting: (o.requested, o.effective, o.rule) for o in apply_builder_rules(inputs)[1]}


def test_every_rule_is_cited_and_implemented_once():
    rules = load_builder_rules()
    assert list(rules.rules) == list(RULES)  # same ids, in the builder's order
    for rid, rule in rules.rules.items():
        assert rule["where"] and rule["log"] and rule["setting"], rid
        assert "builder.py" in rule["where"] or "_common.py" in rule["where"], rid
    for group in ("builder", "common", "build_command", "plugin_config"):
        assert "NVIDIA/TensorRT-LLM" in rules.sources[group] and "read at" in rules.sources[group]
    assert rules.rules["reduce_fusion_architecture"]["keep_architectures"] == [
        "LlamaForCausalLM", "Gemma2ForCausalLM", "MedusaForCausalLM"]


def test_reduce_fusion_is_dropped_for_decilm_and_at_tp1():
    deci = changes(replace(DECI, reduce_fusion=True))
    assert deci == {"reduce_fusion": (True, False, "reduce_fusion_architecture")}
    (o,) = apply_builder_rules(replace(DECI, reduce_fusion=True))[1]
    assert o.log == "Overriding reduce_fusion to False" and "DeciLMForCausalLM cannot use it" in o.explain()
    llama = replace(DECI, architecture="LlamaForCausalLM", reduce_fusion=True)
    assert changes(llama) == {}
    tp1 = apply_builder_rules(replace(llama, tp=1))[1]
    assert [o.setting for o in tp1] == ["reduce_fusion"] and "no all-reduce to fuse at TP1" in tp1[0].explain()
    # user_buffer follows reduce_fusion; norm_quant_fusion needs Llama + NVFP4
    assert changes(replace(DECI, reduce_fusion=True, user_buffer=True))["user_buffer"][1] is False
    assert changes(replace(llama, user_buffer=True)) == {}
    assert changes(replace(DECI, norm_quant_fusion=True))["norm_quant_fusion"][1] is False
    assert changes(replace(llama, reduce_fusion=False, quant_algo="NVFP4", norm_quant_fusion=True)) == {}


def test_fp8_context_fmha_chain():
    assert changes(FP8) == {}  # FP8 weights + FP8 KV + paged context FMHA on Hopper: kept
    # BF16 checkpoint: FP8 context FMHA off ("... must be used together with the fp8 quantization workflow.")
    assert changes(replace(DECI, use_fp8_context_fmha=True)) == {
        "use_fp8_context_fmha": (True, False, "fp8_context_fmha_needs_fp8_quant")}
    # BF16 weights with an FP8 KV cache: paged context FMHA goes too
    assert changes(replace(DECI, kv_cache_quant_algo="FP8", use_fp8_context_fmha=True)) == {
        "use_fp8_context_fmha": (True, False, "fp8_context_fmha_needs_fp8_quant"),
        "use_paged_context_fmha": (True, False, "fp8_context_fmha_needs_fp8_quant")}
    # Ampere (SM 80): no FP8 context FMHA, and no paged context FMHA with an FP8 KV cache
    assert changes(replace(FP8, sm=80)) == {
        "use_fp8_context_fmha": (True, False, "fp8_context_fmha_needs_sm89"),
        "use_paged_context_fmha": (True, False, "fp8_context_fmha_needs_sm89")}
    assert changes(replace(FP8, sm=89)) == {}
    # FP8 weights, BF16 KV: FP8 context FMHA dropped; FP8 KV without it asked: forced on
    assert changes(replace(FP8, kv_cache_quant_algo=None)) == {
        "use_fp8_context_fmha": (True, False, "fp8_paged_context_fmha_needs_fp8_kv")}
    assert changes(replace(FP8, use_fp8_context_fmha=False)) == {
        "use_fp8_context_fmha": (False, True, "fp8_kv_forces_fp8_context_fmha")}
    # without paged context FMHA the last branch does not run: the request stands
    assert changes(replace(FP8, use_paged_context_fmha=False, use_fp8_context_fmha=False)) == {}
    # context FMHA off takes both along, and only that branch runs
    assert changes(replace(FP8, context_fmha=False, max_num_tokens=16384)) == {
        "use_fp8_context_fmha": (True, False, "context_fmha_off_disables_fp8_and_paged"),
        "use_paged_context_fmha": (True, False, "context_fmha_off_disables_fp8_and_paged")}
    assert changes(replace(FP8, streamingllm=True))["use_paged_context_fmha"][2] == \
        "streamingllm_disables_paged_context_fmha"


def test_token_limits():
    small = replace(DECI, max_batch_size=2, max_seq_len=1024, max_input_len=512, max_num_tokens=8192)
    assert changes(small) == {"max_num_tokens": (8192, 2048, "max_num_tokens_clipped")}
    assert changes(replace(DECI, max_num_tokens=16)) == {"max_num_tokens": (16, 32, "max_num_tokens_raised")}
    assert changes(replace(DECI, max_num_tokens=1000, context_fmha=False))["max_num_tokens"] == (
        1000, 16384, "max_num_tokens_raised")
    assert changes(replace(DECI, max_input_len=40000))["max_input_len"] == (40000, 32768, "max_input_len_clipped")
    unpadded = changes(replace(DECI, remove_input_padding=False))
    assert unpadded["max_num_tokens"] == (8192, 256 * 32768, "max_num_tokens_without_padding_removal")


def test_check_settings_names_the_rule_and_its_source():
    check_settings(FP8)
    with pytest.raises(NemoTrtError) as exc:
        check_settings(replace(FP8, reduce_fusion=True))
    assert "reduce_fusion from True to False" in exc.value.problem
    assert "Overriding reduce_fusion to False" in exc.value.problem and "builder.py build()" in exc.value.problem
    assert "builder_rules" in exc.value.fix


def test_sm_version():
    assert (sm_version("9.0"), sm_version("8.9"), sm_version("8.0"), sm_version("10.0")) == (90, 89, 80, 100)


def test_every_profile_plan_is_what_the_builder_builds():
    from nemo_trt.build.builder_rules import inputs_from_plan
    from nemo_trt.build.planner import make_plan
    from nemo_trt.build.profiles import VARIANTS, list_profiles
    from nemo_trt.build.spec import ModelSpec
    from nemo_trt.model_facts import resolve_model

    spec = ModelSpec.from_path(resolve_model(None))
    for profile in list_profiles():
        for precision in profile.precisions:
            for variant in VARIANTS:
                plan = make_plan(spec, profile, precision=precision, variant=variant)
                assert plan.architecture == "DeciLMForCausalLM"
                assert apply_builder_rules(inputs_from_plan(plan))[1] == [], (profile.name, precision, variant)
                assert plan.engine_implied["nccl_plugin"] == ("bfloat16" if plan.world_size > 1 else
                                                             "disabled (world size 1)")
