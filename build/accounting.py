"""Exact parameter, byte, KV-cache and tensor accounting for a `ModelSpec`.

Pure functions: no I/O, no torch. Every figure follows the TensorRT-LLM DeciLM
(nemotron_nas) checkpoint rules in shared/reference/trtllm-checkpoint-format.md:

* names/presence per layer kind (§4): no-op sub-blocks hold no tensors;
* TP split (§5): q/o/ffn split evenly, K/V heads duplicated when tp > kv heads
  (per-rank kv heads = ceil(kv / tp)), norms replicated, the embedding
  replicated unless `use_parallel_embedding`, lm_head split on vocab after
  zero-padding to `pad_vocab_size(vocab, tp)`;
* PP split (§6): `torch.tensor_split(arange(L), pp)` — the first L % pp
  stages get one extra layer; embedding on the first stage, ln_f + lm_head on
  the last;
* FP8 (§8): every linear (q/k/v/o, gate/up/down and the linear-replacement
  layers) is stored as 1-byte FP8; embedding, lm_head and norms stay BF16.
  The (1,)-float32 scale tensors are neither counted in bytes nor in tensors
  unless asked for (`include_fp8_scales=True`), matching the reference tables.

A tied-embedding Llama checkpoint still gets an lm_head in TensorRT-LLM (the
converter copies the embedding), so per-rank TRT-LLM bytes always include it,
while `total_parameters` counts the HF checkpoint's own tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nemo_trt.build.spec import AttentionKind, FFNKind, LayerSpec, ModelSpec
from nemo_trt.errors import NemoTrtError

Precision = Literal["bf16", "fp8"]
PRECISIONS: tuple[str, ...] = ("bf16", "fp8")

BF16_BYTES = 2
FP8_BYTES = 1


def dtype_bytes(dtype: str) -> int:
    if dtype in ("bf16", "fp16", "bfloat16", "float16"):
        return BF16_BYTES
    if dtype == "fp8":
        return FP8_BYTES
    raise NemoTrtError(f"unknown precision {dtype!r}", f"use one of {', '.join(PRECISIONS)}")


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def pad_vocab_size(vocab_size: int, tp_size: int) -> int:
    """TensorRT-LLM `pad_vocab_size`: round the vocabulary up to a multiple of tp."""
    return ceil_div(vocab_size, tp_size) * tp_size


def kv_heads_per_rank(num_kv_heads: int, tp_size: int) -> int:
    """K/V heads on one TP rank: heads are duplicated when tp > kv heads (`dup_kv_weight`)."""
    return ceil_div(num_kv_heads, tp_size)


def pp_layer_ranges(num_layers: int, pp_size: int) -> list[tuple[int, int]]:
    """(first, last) global layer of each PP stage, `torch.tensor_split` rule (Mapping.pp_layers)."""
    if pp_size < 1 or pp_size > num_layers:
        raise NemoTrtError(
            f"pipeline parallel size {pp_size} must be between 1 and the number of layers ({num_layers})",
            "choose a smaller --pp",
        )
    base, extra = divmod(num_layers, pp_size)
    ranges, start = [], 0
    for stage in range(pp_size):
        count = base + (1 if stage < extra else 0)
        ranges.append((start, start + count - 1))
        start += count
    return ranges


def rank_coords(rank: int, tp_size: int) -> tuple[int, int]:
    """(tp_rank, pp_rank) of a global rank (Mapping, cp=1): TP groups are contiguous ranks."""
    return rank % tp_size, rank // tp_size


# ---- per-layer pieces ----------------------------------------------------------------


@dataclass(frozen=True)
class LayerParams:
    """Parameters of one layer on one TP rank, split by storage class."""

    linear: int  # FP8-able matmul weights
    norm: int  # RMSNorm weights (always 16-bit)
    tensors: int  # TRT-LLM tensors (weights only)
    fp8_linears: int  # linear modules that get FP8 scale tensors

    def bytes(self, precision: str) -> int:
        return self.linear * dtype_bytes(precision) + self.norm * BF16_BYTES


def _check_tp(spec: ModelSpec, tp: int) -> None:
    if tp < 1:
        raise NemoTrtError(f"tensor parallel size must be >= 1, got {tp}", "pass --tp 1 or more")
    if spec.num_attention_heads % tp:
        raise NemoTrtError(
            f"tensor parallel size {tp} does not divide num_attention_heads={spec.num_attention_heads}",
            "choose a TP size that divides the number of attention heads (1, 2, 4 or 8 for Super-49B)",
        )


def layer_params(spec: ModelSpec, layer: LayerSpec, tp: int = 1) -> LayerParams:
    """One layer's weights on one TP rank (exact shapes of §7.1; uneven splits round up)."""
    h, d = spec.hidden_size, spec.head_dim
    linear = norm = tensors = fp8_linears = 0
    if layer.has_input_layernorm:
        norm += h
        tensors += 1
    if layer.attention is AttentionKind.ATTENTION:
        q = spec.num_attention_heads // tp * d
        kv = kv_heads_per_rank(layer.attention_kv_heads, tp) * d
        linear += (q + 2 * kv) * h  # fused qkv [q + 2kv, h]
        linear += h * q  # dense (o_proj) [h, heads*d/tp]
        tensors += 2
        fp8_linears += 2
    elif layer.attention is AttentionKind.LINEAR:
        linear += ceil_div(h, tp) * h  # ColumnLinear, gather_output
        tensors += 1
        fp8_linears += 1
    if layer.has_post_layernorm:
        norm += h
        tensors += 1
    if layer.ffn is FFNKind.MLP:
        f = ceil_div(layer.mlp_intermediate_size, tp)
        linear += 3 * f * h  # fc (gate_proj), gate (up_proj), proj (down_proj)
        tensors += 3
        fp8_linears += 3
    elif layer.ffn is FFNKind.LINEAR:
        linear += ceil_div(h, tp) * h
        tensors += 1
        fp8_linears += 1
    return LayerParams(linear, norm, tensors, fp8_linears)


# ---- whole model -------------------------------------------------------------------


def total_parameters(spec: ModelSpec) -> int:
    """Parameters of the HF checkpoint (Super-49B: 49,867,145,216)."""
    total = 0
    for shape in spec.hf_tensor_shapes().values():
        n = 1
        for dim in shape:
            n *= dim
        total += n
    return total


def hf_tensor_count(spec: ModelSpec) -> int:
    """Tensors in the HF checkpoint (Super-49B: 568)."""
    return len(spec.hf_tensor_shapes())


def embedding_params(spec: ModelSpec) -> int:
    return spec.vocab_size * spec.hidden_size


def kv_bytes_per_token(spec: ModelSpec, kv_dtype: str = "bf16", tp: int = 1,
                       layers: tuple[int, int] | None = None) -> int:
    """KV-cache bytes for one token on one TP rank (all layers, or the inclusive global `layers` range).

    2 (K and V) × kv heads per rank × head_dim × bytes, summed over attention layers.
    Super-49B: 200,704 B in BF16, 100,352 B in FP8 at TP1.
    """
    _check_tp(spec, tp)
    first, last = layers if layers is not None else (0, spec.num_layers - 1)
    b = dtype_bytes(kv_dtype)
    return sum(
        2 * kv_heads_per_rank(layer.attention_kv_heads, tp) * spec.head_dim * b
        for layer in spec.layers[first:last + 1]
        if layer.has_kv_cache
    )


def weight_bytes(spec: ModelSpec, precision: str = "bf16") -> int:
    """Bytes of all TRT-LLM weights at TP1 PP1 (Super-49B: BF16 99,734,290,432; FP8 51,969,556,480)."""
    return rank_accounting(spec, precision, tp=1, pp=1, rank=0).weight_bytes


@dataclass(frozen=True)
class RankAccounting:
    """What one rank file / one GPU holds."""

    rank: int
    tp_rank: int
    pp_rank: int
    layers: tuple[int, int]  # global first, last
    attention_layers: int
    params: int  # parameters stored on this rank (after splitting/padding)
    weight_bytes: int
    tensors: int
    kv_bytes_per_token: int  # in the requested KV dtype


def rank_accounting(spec: ModelSpec, precision: str = "bf16", *, tp: int = 1, pp: int = 1, rank: int = 0,
                    kv_dtype: str | None = None, use_parallel_embedding: bool = False,
                    embedding_sharding_dim: int = 0, include_fp8_scales: bool = False) -> RankAccounting:
    """Parameters, bytes, tensors and KV bytes/token of one rank of a TP×PP checkpoint."""
    _check_tp(spec, tp)
    dtype_bytes(precision)
    if not 0 <= rank < tp * pp:
        raise NemoTrtError(f"rank {rank} is outside world size {tp * pp}", "use a rank in [0, tp*pp)")
    tp_rank, pp_rank = rank_coords(rank, tp)
    first, last = pp_layer_ranges(spec.num_layers, pp)[pp_rank]
    h, v = spec.hidden_size, spec.vocab_size
    linear = norm = tensors = fp8_linears = 0
    embed = 0
    for layer in spec.layers[first:last + 1]:
        lp = layer_params(spec, layer, tp)
        linear += lp.linear
        norm += lp.norm
        tensors += lp.tensors
        fp8_linears += lp.fp8_linears
    if pp_rank == 0:
        if use_parallel_embedding and tp > 1:
            embed += ceil_div(v, tp) * h if embedding_sharding_dim == 0 else v * ceil_div(h, tp)
        else:
            embed += v * h
        tensors += 1
    if pp_rank == pp - 1:
        embed += pad_vocab_size(v, tp) // tp * h  # lm_head, split on (padded) vocab
        norm += h  # ln_f
        tensors += 2
    attn = sum(1 for layer in spec.layers[first:last + 1] if layer.has_kv_cache)
    kv_dtype = kv_dtype or ("fp8" if precision == "fp8" else "bf16")
    wbytes = linear * dtype_bytes(precision) + (norm + embed) * BF16_BYTES
    if precision == "fp8" and include_fp8_scales:
        # weights_scaling_factor + activation_scaling_factor per FP8 linear, float32 (1,)
        tensors += 2 * fp8_linears
        wbytes += 2 * fp8_linears * 4
        if kv_dtype == "fp8":
            tensors += attn  # kv_cache_scaling_factor
            wbytes += attn * 4
    return RankAccounting(
        rank=rank, tp_rank=tp_rank, pp_rank=pp_rank, layers=(first, last), attention_layers=attn,
        params=linear + norm + embed, weight_bytes=wbytes, tensors=tensors,
        kv_bytes_per_token=kv_bytes_per_token(spec, kv_dtype, tp, (first, last)),
    )


def all_ranks(spec: ModelSpec, precision: str = "bf16", *, tp: int = 1, pp: int = 1, **kwargs) -> list[RankAccounting]:
    return [rank_accounting(spec, precision, tp=tp, pp=pp, rank=r, **kwargs) for r in range(tp * pp)]


@dataclass(frozen=True)
class ModelAccounting:
    """Summary figures used by `nemo-trt inspect`."""

    total_parameters: int
    hf_tensors: int
    trtllm_tensors: int
    attention_layers: int
    num_layers: int
    bytes_by_precision: dict[str, int]
    kv_bytes_per_token: dict[str, int]
    per_tp: dict[int, dict[str, int]]  # tp -> {"bf16": B, "fp8": B, "kv_bf16": B, "kv_fp8": B}


def summarize(spec: ModelSpec, tp_sizes: tuple[int, ...] = (1, 2, 4, 8)) -> ModelAccounting:
    per_tp: dict[int, dict[str, int]] = {}
    for tp in tp_sizes:
        if spec.num_attention_heads % tp:
            continue
        per_tp[tp] = {
            "bf16": rank_accounting(spec, "bf16", tp=tp).weight_bytes,
            "fp8": rank_accounting(spec, "fp8", tp=tp).weight_bytes,
            "kv_bf16": kv_bytes_per_token(spec, "bf16", tp),
            "kv_fp8": kv_bytes_per_token(spec, "fp8", tp),
        }
    return ModelAccounting(
        total_parameters=total_parameters(spec),
        hf_tensors=hf_tensor_count(spec),
        trtllm_tensors=rank_accounting(spec, "bf16").tensors,
        attention_layers=len(spec.attention_layers),
        num_layers=spec.num_layers,
        bytes_by_precision={p: weight_bytes(spec, p) for p in PRECISIONS},
        kv_bytes_per_token={p: kv_bytes_per_token(spec, p) for p in PRECISIONS},
        per_tp=per_tp,
    )
