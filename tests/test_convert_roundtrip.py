"""Convert -> read back -> verify, on small DeciLM/Llama checkpoints, BF16 and FP8, TP 1/2/4/8 and PP 2.

Tolerances (stated in build/verify.py): BF16 is bit-exact per tensor and the reference model's
logits are identical; FP8 per-tensor relative error <= 1/16 and logits min cosine >= 0.99,
top-1 agreement >= 0.90 against the source model.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from nemo_trt.build.convert import convert_checkpoint, read_converted_as_hf, verify_checkpoint
from nemo_trt.build.hf_checkpoint import HFCheckpoint
from nemo_trt.reference import ReferenceModel


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (4, 1), (8, 1), (2, 2)])
def test_bf16_round_trip_is_exact_and_verifies(converted, convert_source, tp, pp):
    out = converted(tp, pp)
    spec, tensors = read_converted_as_hf(out)
    src = HFCheckpoint(convert_source)
    seen = set()
    for name, t in tensors:
        assert torch.equal(t, src.get(name)), name
        seen.add(name)
    assert seen == set(src.spec.hf_tensor_shapes())
    report = verify_checkpoint(convert_source, out, logits=(tp, pp) in {(8, 1), (2, 2)})
    assert report.ok, report.problems
    assert report.tensors_checked == len(seen)
    if report.logits:
        assert report.logits["max_abs_diff"] == 0.0 and report.logits["top1_agreement"] == 1.0


def test_rank_files_follow_trtllm_layout(converted, convert_source):
    out = converted(2, 2)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["mapping"]["tp_size"] == 2 and cfg["mapping"]["pp_size"] == 2 and cfg["mapping"]["world_size"] == 4
    files = sorted(p.name for p in out.iterdir())
    assert files == ["config.json", "manifest.json"] + [f"rank{r}.safetensors" for r in range(4)]
    first = set(safe_open(str(out / "rank0.safetensors"), "pt").keys())
    last = set(safe_open(str(out / "rank3.safetensors"), "pt").keys())
    assert "transformer.vocab_embedding.weight" in first and "lm_head.weight" not in first
    assert "lm_head.weight" in last and "transformer.ln_f.weight" in last
    assert "transformer.vocab_embedding.weight" not in last
    # 7 layers split 4 + 3; stage 1 starts again at layer 0 (global layer 4: attention kv=4, mlp)
    assert "transformer.layers.0.attention.qkv.weight" in last and not any(".layers.3." in n for n in last)
    h = safe_open(str(out / "rank3.safetensors"), "pt")
    assert h.get_slice("transformer.layers.0.attention.qkv.weight").get_shape() == [(4 + 2 * 2) * 8, 64]
    assert h.get_slice("lm_head.weight").get_shape() == [125, 64]


def test_tp8_duplicates_kv_heads_and_pads_vocab(converted):
    out = converted(8)
    h = safe_open(str(out / "rank5.safetensors"), "pt")
    # layer 3 has 1 KV head: every rank holds 1 q head + the (duplicated) k and v head
    assert h.get_slice("transformer.layers.3.attention.qkv.weight").get_shape() == [3 * 8, 64]
    k0 = safe_open(str(out / "rank0.safetensors"), "pt").get_tensor("transformer.layers.3.attention.qkv.weight")[8:16]
    assert torch.equal(h.get_tensor("transformer.layers.3.attention.qkv.weight")[8:16], k0)
    last = safe_open(str(out / "rank7.safetensors"), "pt").get_tensor("lm_head.weight")
    assert last.shape == (32, 64) and torch.count_nonzero(last[26:]) == 0  # 250 -> 256, 6 zero rows


def test_greedy_tokens_match_after_bf16_conversion(converted, convert_source):
    hf = ReferenceModel.from_hf(convert_source)
    trt = ReferenceModel.from_converted(converted(4))
    prompt = list(range(5, 40))
    assert trt.generate(prompt, 12) == hf.generate(prompt, 12)


@pytest.mark.parametrize("tp,pp,kv", [(2, 1, "fp8"), (1, 2, "bf16")])
def test_fp8_from_bf16_verifies(converted, convert_source, tp, pp, kv):
    out = converted(tp, pp, "fp8", kv)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization"]["quant_algo"] == "FP8"
    assert cfg["quantization"]["kv_cache_quant_algo"] == ("FP8" if kv == "fp8" else None)
    h = safe_open(str(out / "rank0.safetensors"), "pt")
    names = set(h.keys())
    assert h.get_tensor("transformer.layers.0.attention.qkv.weight").dtype == torch.float8_e4m3fn
    assert h.get_tensor("transformer.layers.0.attention.qkv.weights_scaling_factor").shape == (1,)
    assert "transformer.layers.0.ffn.proj.activation_scaling_factor" in names
    assert ("transformer.layers.0.attention.kv_cache_scaling_factor" in names) == (kv == "fp8")
    assert h.get_tensor("transformer.vocab_embedding.weight").dtype == torch.bfloat16  # embedding stays BF16
    # linear replacements stay BF16 and are named in exclude_modules
    assert h.get_tensor("transformer.layers.2.attention.weight").dtype == torch.bfloat16
    assert "transformer.layers.2.ffn" in cfg["quantization"]["exclude_modules"]
    report = verify_checkpoint(convert_source, out)
    assert report.ok, report.problems
    assert 0 < report.worst[0].rel_error <= 1 / 16
    assert report.logits["min_cosine"] >= 0.99 and report.logits["top1_agreement"] >= 0.90
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["plan"]["calibration"]["prompts"] == 16


def test_fp8_modelopt_source_converts_directly(tmp_path):
    from fixtures.convert_models import write_modelopt_fp8

    src = write_modelopt_fp8(tmp_path / "mo")
    out = tmp_path / "out"
    result = convert_checkpoint(src, out, tp=2, precision="fp8", kv_cache_dtype="fp8", progress=False)
    assert result.calibration is None  # scales come from the checkpoint
    ck = HFCheckpoint(src)
    h = safe_open(str(out / "rank1.safetensors"), "pt")
    # fused qkv: one scale = max of the q/k/v scales (ModelOpt's qkv merge), others requantized
    scales = [float(ck.get(f"model.layers.0.self_attn.{x}_proj.weight_scale")) for x in "qkv"]
    assert float(h.get_tensor("transformer.layers.0.attention.qkv.weights_scaling_factor")) == max(scales)
    ins = [float(ck.get(f"model.layers.0.self_attn.{x}_proj.input_scale")) for x in "qkv"]
    assert float(h.get_tensor("transformer.layers.0.attention.qkv.activation_scaling_factor")) == max(ins)
    assert float(h.get_tensor("transformer.layers.0.attention.kv_cache_scaling_factor")) == pytest.approx(0.03)
    # single linears are copied byte for byte (rank 1 holds the second half of the gate_proj rows)
    fc = h.get_tensor("transformer.layers.0.ffn.fc.weight")
    src_fc = ck.get("model.layers.0.mlp.gate_proj.weight")
    assert torch.equal(fc.view(torch.uint8), src_fc[src_fc.shape[0] // 2:].view(torch.uint8))
    assert float(h.get_tensor("transformer.layers.0.ffn.fc.weights_scaling_factor")) == float(
        ck.get("model.layers.0.mlp.gate_proj.weight_scale"))
    report = verify_checkpoint(src, out)
    assert report.ok, report.problems
    # and the same source can be converted to BF16 (dequantized), which verifies exactly
    bf16 = convert_checkpoint(src, tmp_path / "bf16", tp=1, progress=False)
    assert verify_checkpoint(src, bf16.output, logits=False).ok


def test_llama_checkpoint_round_trip(tmp_path):
    from fixtures.convert_models import llama_config, write_random

    src = write_random(tmp_path / "llama", llama_config())
    out = convert_checkpoint(src, tmp_path / "out", tp=2, pp=1, progress=False).output
    assert "transformer.layers.0.mlp.fc.weight" in safe_open(str(out / "rank0.safetensors"), "pt").keys()
    report = verify_checkpoint(src, out)
    assert report.ok, report.problems


def test_workers_write_identical_files(tmp_path, converted, convert_source):
    serial = converted(4, 2)
    parallel = convert_checkpoint(convert_source, tmp_path / "par", tp=4, pp=2, workers=2, progress=False)
    want = json.loads((serial / "manifest.json").read_text())["files"]
    got = json.loads((parallel.output / "manifest.json").read_text())["files"]
    assert got == want
