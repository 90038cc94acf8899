"""`nemo-trt verify`: prove a converted TensorRT-LLM checkpoint is its HF source, tensor by tensor.

Checks, in order: manifest (every file's sha256 and size, same source fingerprint), config.json
(equal to what the converter writes for this spec/plan: layer_configs, mapping, quantization),
rank-file contents (exactly the expected names, dtypes and shapes), every weight after inverting
the mapping (exact for BF16; for FP8 a relative error ||w - deq(q)|| / ||w|| below
FP8_REL_TOL, replicated tensors identical on all ranks, scales positive and shared, vocab padding
zero), and — for small models — reference-model logits loaded from both sides.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nemo_trt.build.convert import fp8
from nemo_trt.build.convert import manifest as mf
from nemo_trt.build.convert.converter import QuantSettings, rank_entries
from nemo_trt.build.convert.mapping import RankMapping
from nemo_trt.build.convert.reader import ConvertedCheckpoint
from nemo_trt.build.convert.trtllm_config import make_config, rank_file
from nemo_trt.build.convert.weight_map import Split, merge_ranks
from nemo_trt.errors import NemoTrtError

# E4M3 keeps 3 mantissa bits: per-element rounding error <= 2^-4 relative for normal values;
# the tensor-level (Frobenius) error of per-tensor scaled weights is well below that.
FP8_REL_TOL = 2.0 ** -4
# Logit checks (reference model, float32): BF16 must be bit-identical in weights, so logits match
# to float32 round-off; FP8 (weights dequantized, activations not simulated) is held to these:
FP8_MIN_COSINE = 0.99
FP8_MIN_TOP1 = 0.90
LOGITS_MAX_PARAMS = 300_000_000  # above this the logit comparison is skipped (CPU time, memory)


@dataclass(frozen=True)
class TensorError:
    name: str
    rel_error: float
    max_abs_error: float

    def to_dict(self) -> dict:
        return {"name": self.name, "rel_error": self.rel_error, "max_abs_error": self.max_abs_error}


@dataclass
class VerifyReport:
    checkpoint: str
    converted: str
    precision: str = "bf16"
    tp: int = 1
    pp: int = 1
    problems: list[str] = field(default_factory=list)
    tensors_checked: int = 0
    files_hashed: int = 0
    worst: list[TensorError] = field(default_factory=list)
    logits: dict | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"ok": self.ok, "checkpoint": self.checkpoint, "converted": self.converted,
                "precision": self.precision, "tp": self.tp, "pp": self.pp, "problems": self.problems,
                "tensors_checked": self.tensors_checked, "files_hashed": self.files_hashed,
                "worst": [w.to_dict() for w in self.worst], "logits": self.logits}


def verify_checkpoint(checkpoint: str | Path, converted: str | Path, *, logits: bool = True,
                      prompts: int = 4) -> VerifyReport:
    from nemo_trt.build.convert.source import SourceWeights

    src = SourceWeights(checkpoint)
    out = ConvertedCheckpoint.open(converted)
    quant = out.config.get("quantization") or {}
    report = VerifyReport(str(checkpoint), str(converted), "fp8" if quant.get("quant_algo") == "FP8" else "bf16",
                          out.tp, out.pp)
    p = report.problems
    kv = "fp8" if quant.get("kv_cache_quant_algo") == "FP8" else "bf16"

    # 1. manifest
    man = mf.load_manifest(out.directory)
    p += mf.check_files(out.directory)
    report.files_hashed = len((man or {}).get("files", {}))
    if man is not None and man.get("source") != src.ckpt.fingerprint():
        p.append("manifest: the source checkpoint differs from the one this was converted from "
                 "(config.json or shard headers changed)")
    # 2. config
    dtype = out.config.get("dtype", "bfloat16")
    expected = make_config(src.spec, out.tp, out.pp, precision=report.precision, kv_cache_dtype=kv, dtype=dtype)
    for key in sorted(set(expected) | set(out.config)):
        if expected.get(key) != out.config.get(key):
            p.append(f"config.json: {key} = {_short(out.config.get(key))}, expected {_short(expected.get(key))}")
    if any(x.startswith(("config.json: layer_configs", "config.json: mapping", "config.json: architecture"))
           for x in p):
        return report  # tensors cannot be mapped against a different layout
    before_layout = len(p)
    # 3. rank file layout
    q = QuantSettings(report.precision, kv, dtype)
    from safetensors import safe_open

    for r in range(out.tp * out.pp):
        expected_entries = {e.name: e for _, es in rank_entries(src.spec, RankMapping(out.tp, out.pp, r), q)
                            for e in es}
        try:
            h = safe_open(str(out.directory / rank_file(r)), framework="pt")
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            p.append(f"{rank_file(r)}: cannot be opened ({exc})")
            return report
        stored = set(h.keys())
        for name in sorted(set(expected_entries) - stored)[:5]:
            p.append(f"{rank_file(r)}: missing {name}")
        for name in sorted(stored - set(expected_entries))[:5]:
            p.append(f"{rank_file(r)}: unexpected tensor {name}")
        for name in sorted(stored & set(expected_entries)):
            sl = h.get_slice(name)
            shape = tuple(sl.get_shape())
            if shape != expected_entries[name].shape:
                p.append(f"{rank_file(r)}: {name} has shape {list(shape)}, "
                         f"expected {list(expected_entries[name].shape)}")
    if len(p) > before_layout:
        return report  # names/shapes are wrong: comparing values would only repeat it
    # 4. tensors
    errors: list[TensorError] = []
    spec = src.spec
    for rule, parts in out.iter_rules():
        if rule.split is Split.REPLICATE and any(not torch.equal(parts[0][rule.name], x[rule.name]) for x in parts[1:]):
            p.append(f"{rule.name}: replicated tensor differs between TP ranks")
        if rule.split is Split.VOCAB:
            pad = torch.cat([x[rule.name] for x in parts], 0)[spec.vocab_size:]
            if pad.numel() and bool(pad.float().abs().max() > 0):
                p.append(f"{rule.name}: vocabulary padding rows are not zero")
        weights = []
        for part in parts:
            w = part[rule.name]
            if w.dtype == fp8.FP8:
                ws = part.get(f"{rule.module}.{fp8.WEIGHT_SCALE}")
                as_ = part.get(f"{rule.module}.{fp8.ACTIVATION_SCALE}")
                for label, s in (("weights_scaling_factor", ws), ("activation_scaling_factor", as_)):
                    if s is None or not math.isfinite(float(s)) or float(s) <= 0:
                        p.append(f"{rule.module}.{label}: missing, non-finite or not positive")
                if ws is not None and float(ws) != float(parts[0][f"{rule.module}.{fp8.WEIGHT_SCALE}"]):
                    p.append(f"{rule.module}.weights_scaling_factor differs between TP ranks")
                w = fp8.dequantize(w, float(ws), torch.float32) if ws is not None else w.float()
            weights.append(w)
        kv_name = rule.name.replace("qkv.weight", fp8.KV_SCALE)
        if kv == "fp8" and rule.name.endswith("qkv.weight"):
            vals = [float(x[kv_name]) if kv_name in x else float("nan") for x in parts]
            if not all(math.isfinite(v) and v > 0 for v in vals) or len(set(vals)) != 1:
                p.append(f"{kv_name}: missing, not positive or not shared by the TP ranks")
        merged = merge_ranks(rule, weights, spec.head_dim, spec.num_attention_heads, spec.vocab_size)
        for name, got in zip(rule.sources, merged):
            if rule.name == "lm_head.weight" and spec.tie_word_embeddings:
                continue
            want = src.read(name)
            if src.is_fp8(name):
                want = fp8.dequantize(want, src.weight_scale(name), got.dtype)
            report.tensors_checked += 1
            if got.dtype != torch.float32:  # unquantized: must be bit-exact (after the documented dtype cast)
                if not torch.equal(got, want.to(got.dtype)):
                    diff = (got.float() - want.float()).abs().max().item()
                    p.append(f"{name}: differs from the source (max abs diff {diff:.3g}); BF16 must be exact")
                continue
            ref = want.float()
            err = (got - ref)
            rel = float(err.norm() / ref.norm().clamp_min(1e-30))
            errors.append(TensorError(name, rel, float(err.abs().max())))
            if not rel <= FP8_REL_TOL:
                p.append(f"{name}: FP8 relative error {rel:.4f} exceeds {FP8_REL_TOL:.4f}")
    report.worst = sorted(errors, key=lambda e: -e.rel_error)[:5]
    covered = {s for r in range(out.pp) for rule in out.stage_rules(r) for s in rule.sources}
    missing = set(spec.hf_tensor_shapes()) - covered
    if missing:
        p.append(f"converted checkpoint does not cover {sorted(missing)[:3]}")
    # 5. logits
    n_params = sum(math.prod(s) for s in spec.hf_tensor_shapes().values())
    if logits and n_params <= LOGITS_MAX_PARAMS:
        report.logits = compare_logits(src, out.directory, report.precision, prompts)
        if not report.logits["ok"]:
            p.append(f"logits: {report.logits['reason']}")
    elif logits:
        report.logits = {"skipped": f"{n_params:,} parameters > {LOGITS_MAX_PARAMS:,}: too large for a CPU logit check"}
    return report


def _source_model(src, precision: str):
    from nemo_trt.reference import ReferenceModel

    # A pre-quantized source converted to BF16 was dequantized to BF16: compare against exactly that.
    deq = torch.bfloat16 if precision == "bf16" else torch.float32

    def tensors():
        for name in src.spec.hf_tensor_shapes():
            t = src.read(name)
            yield name, fp8.dequantize(t, src.weight_scale(name), deq) if src.is_fp8(name) else t
    return ReferenceModel.from_state_dict(src.spec, tensors())


def compare_logits(src, converted: Path, precision: str, prompts: int = 4) -> dict:
    from nemo_trt.build.convert.prompts import DEFAULT_PROMPTS, tokenize_prompts
    from nemo_trt.reference import ReferenceModel

    a, b = _source_model(src, precision), ReferenceModel.from_converted(converted)
    ids_list, how = tokenize_prompts(src.directory, list(DEFAULT_PROMPTS[:prompts]), src.spec.vocab_size)
    max_abs, agree, total, cos_min = 0.0, 0, 0, 1.0
    for ids in ids_list:
        la, lb = a.logits(ids[:256]), b.logits(ids[:256])
        max_abs = max(max_abs, float((la - lb).abs().max()))
        agree += int((la.argmax(-1) == lb.argmax(-1)).sum())
        total += la.shape[0]
        cos_min = min(cos_min, float(torch.nn.functional.cosine_similarity(la, lb, dim=-1).min()))
    top1 = agree / max(total, 1)
    if precision == "bf16":
        ok = top1 == 1.0 and max_abs <= 1e-4
        reason = f"BF16 logits differ (max abs {max_abs:.3g}, top-1 agreement {top1:.3f})"
    else:
        ok = cos_min >= FP8_MIN_COSINE and top1 >= FP8_MIN_TOP1
        reason = (f"FP8 logits too far from the source (min cosine {cos_min:.4f} < {FP8_MIN_COSINE} or "
                  f"top-1 agreement {top1:.3f} < {FP8_MIN_TOP1})")
    return {"ok": ok, "reason": None if ok else reason, "tokens": total, "tokenization": how,
            "max_abs_diff": max_abs, "top1_agreement": top1, "min_cosine": cos_min}


def _short(v, n: int = 120) -> str:
    s = repr(v)
    return s if len(s) <= n else s[:n] + "…"


__all__ = ["VerifyReport", "TensorError", "verify_checkpoint", "NemoTrtError"]
