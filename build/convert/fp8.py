"""Per-tensor FP8 (E4M3) quantization, as TensorRT-LLM's `FP8Linear` expects it.

`FP8Linear` (tensorrt_llm/quantization/layers.py) holds an FP8 `weight` and two float32
(1,)-shaped factors, `weights_scaling_factor` and `activation_scaling_factor`; it computes
`y = (x_fp8 @ w_fp8^T) * (w_scale * a_scale)`, so `w ~= w_fp8 * w_scale` and a scale is
amax / 448 (the E4M3 maximum). `Attention` adds `kv_cache_scaling_factor` for an FP8 KV
cache (tensorrt_llm/layers/attention.py). Work is chunked by rows so quantizing a large
weight never materialises a float32 copy of it.
"""
from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
_MIN_AMAX = 1e-12
_CHUNK_ELEMS = 8 * 1024 * 1024

WEIGHT_SCALE = "weights_scaling_factor"
ACTIVATION_SCALE = "activation_scaling_factor"
KV_SCALE = "kv_cache_scaling_factor"


def _row_chunks(t: torch.Tensor):
    if t.dim() == 0:
        yield t.reshape(1)
        return
    rows = max(1, _CHUNK_ELEMS // max(1, t[0].numel()))
    for start in range(0, t.shape[0], rows):
        yield t[start:start + rows]


def amax(t: torch.Tensor) -> float:
    """max |t|, in float32, chunked."""
    m = 0.0
    for chunk in _row_chunks(t):
        if chunk.numel():
            if chunk.dtype in (torch.bfloat16, torch.float16, torch.float32):
                lo, hi = torch.aminmax(chunk)  # no temporary copy; ~20x faster than abs().max()
                m = max(m, abs(float(lo)), abs(float(hi)))
            else:
                m = max(m, float(chunk.float().abs().max()))
    return m


def scale_from_amax(a: float) -> float:
    return max(float(a), _MIN_AMAX) / FP8_MAX


def quantize(t: torch.Tensor, scale: float) -> torch.Tensor:
    """Round t / scale to E4M3 (saturating at +-448); float32 maths, in place per chunk."""
    out = torch.empty(t.shape, dtype=FP8)
    inv = 1.0 / scale
    for src, dst in zip(_row_chunks(t), _row_chunks(out)):
        dst.copy_(src.to(torch.float32, copy=True).mul_(inv).clamp_(-FP8_MAX, FP8_MAX).to(FP8))
    return out


def dequantize(t: torch.Tensor, scale: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    out = torch.empty(t.shape, dtype=dtype)
    for src, dst in zip(_row_chunks(t), _row_chunks(out)):
        dst.copy_(src.to(torch.float32, copy=True).mul_(scale).to(dtype))
    return out


def requantize(t: torch.Tensor, old_scale: float, new_scale: float) -> torch.Tensor:
    """Re-express an FP8 tensor under a larger shared scale (fused qkv of a pre-quantized source)."""
    if old_scale == new_scale:
        return t
    out = torch.empty(t.shape, dtype=FP8)
    for src, dst in zip(_row_chunks(t), _row_chunks(out)):
        dst.copy_(src.to(torch.float32, copy=True).mul_(old_scale / new_scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8))
    return out


def scale_tensor(value: float) -> torch.Tensor:
    return torch.tensor([value], dtype=torch.float32)
