"""Memory planner: will the model fit a GPU profile, how much KV cache is left, and with which settings.

`make_plan(spec, profile, ...)` merges the profile's layout for a precision ×
variant with the caller's overrides, then re-checks feasibility. Per rank:

    weights      exact (nemo_trt.build.accounting)
    activations  ACTIVATION_FACTOR × max_num_tokens × per-token working set of the widest layer
                 + logits (last PP stage) + fixed CUDA context / workspace (+ comm buffers if tp·pp > 1)
    KV pool      (GPU memory − weights − activations) × kv_cache_free_gpu_mem_fraction
                 (TensorRT-LLM sizes the pool from the memory left after the engine is loaded)
    KV tokens    KV pool / KV bytes per token of the rank, rounded down to whole tokens_per_block blocks

The per-token working set counts one layer's live 16-bit tensors (TensorRT
reuses activation memory across layers): residual and normed input (2·h), the
fused qkv output, the attention output (h) and the MLP's fc+gate outputs plus
their activated product (3·d_ff/tp). ACTIVATION_FACTOR = 2 covers TensorRT's
imperfect buffer reuse and GEMM/attention workspaces. It is an estimate, so
the plan keeps a margin: the KV fraction (0.9) leaves 10% unallocated.

Engine capacity in tokens is the minimum over ranks (PP stages allocate their
KV blocks in lockstep); a stage without attention layers needs no KV cache.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from nemo_trt.build import accounting
from nemo_trt.build.builder_rules import apply_builder_rules, implied_settings, inputs_for
from nemo_trt.build.calibration_plan import CalibrationPlan
from nemo_trt.build.profiles import VARIANTS, GpuProfile, list_profiles
from nemo_trt.build.spec import FFNKind, ModelSpec
from nemo_trt.errors import NemoTrtError

MIB = 1024 * 1024
ACTIVATION_FACTOR = 2
ACTIVATION_BYTES = 2  # activations stay 16-bit even in FP8 engines (FP8 GEMMs output BF16)
CUDA_CONTEXT_BYTES = 1536 * MIB  # CUDA context + cuBLAS/TensorRT workspaces + runtime buffers
COMM_BUFFER_BYTES = 512 * MIB  # NCCL + custom all-reduce workspace when tp·pp > 1
LOGITS_BYTES = 4  # float32 logits (logits_dtype default)
ACTIVATION_FORMULA = (
    "activations/rank = 2 x max_num_tokens x 2 B x (3*hidden + qkv_width/tp + 3*max_d_ff/tp)"
    " + 2 x max_batch_size x vocab x 4 B (last PP stage: fp32 logits)"
    " + 1.5 GiB CUDA context/workspaces + 0.5 GiB NCCL/all-reduce buffers (multi-GPU); "
    "KV pool = (GPU memory - weights - activations) x kv_cache_free_gpu_mem_fraction"
)


class BuildSettings(BaseModel):
    """What trtllm-build and the Triton tensorrt_llm model get."""

    max_batch_size: int
    max_input_len: int
    max_seq_len: int
    max_num_tokens: int
    max_beam_width: int = 1
    kv_cache_type: str = "paged"
    tokens_per_block: int
    gemm_plugin: str  # "auto" | "bfloat16" | "fp8" | "disable"
    use_paged_context_fmha: bool
    use_fp8_context_fmha: bool
    reduce_fusion: bool
    multiple_profiles: bool
    kv_cache_free_gpu_mem_fraction: float
    enable_kv_cache_reuse: bool
    enable_chunked_context: bool
    batch_scheduler_policy: str  # "max_utilization" | "guaranteed_no_evict"
    reasons: dict[str, str]  # field name -> one-line why


class RankPlan(BaseModel):
    rank: int
    tp_rank: int
    pp_rank: int
    layers: tuple[int, int]  # global first, last
    weight_bytes: int
    activation_bytes: int
    kv_bytes_per_token: int
    free_bytes_for_kv: int
    kv_tokens: int
    concurrent_sequences: int
    attention_layers: int = 0
    params: int = 0
    tensors: int = 0
    gpu_memory_bytes: int = 0


class Plan(BaseModel):
    model: str
    profile: str
    gpu_name: str
    num_gpus: int
    gpu_memory_mib: int
    compute_capability: str
    precision: Literal["bf16", "fp8"]
    kv_cache_dtype: Literal["bf16", "fp8"]
    variant: Literal["throughput", "latency"]
    tp: int
    pp: int
    world_size: int
    build: BuildSettings
    ranks: list[RankPlan]
    input_len: int
    output_len: int
    warnings: list[str]
    reasons: dict[str, str]
    # added: engine-wide figures derived from the ranks
    kv_tokens: int = 0  # KV capacity of the engine in tokens (min over ranks with KV layers)
    kv_limited_sequences: int = 0  # input_len+output_len sequences the KV pool holds at once
    concurrent_sequences: int = 0  # min(kv_limited_sequences, max_batch_size)
    total_weight_bytes: int = 0  # sum over ranks (replicated embedding counted per rank)
    activation_formula: str = ""
    architecture: str = ""  # the checkpoint's, which TensorRT-LLM's builder rules look at
    # builder rules that changed a requested setting (configs/trtllm builder_rules): `build` holds the result
    builder_overrides: list[dict] = Field(default_factory=list)
    engine_implied: dict[str, str] = Field(default_factory=dict)  # what the engine gets that no flag sets
    # set by nemo_trt.build.layout when the caller gives the GPUs of one node
    nodes: int = 1  # nodes one engine's ranks span
    gpus_per_node: int | None = None  # trtllm-build --gpus_per_node when nodes > 1
    # FP8 calibration stage (build/calibration_plan.py), set by callers that know the checkpoint
    calibration: CalibrationPlan | None = None

    @property
    def max_rank_weight_bytes(self) -> int:
        return max(r.weight_bytes for r in self.ranks)


def activation_bytes(spec: ModelSpec, *, tp: int, max_num_tokens: int, max_batch_size: int,
                     layers: tuple[int, int], last_stage: bool, world_size: int) -> int:
    """Estimated activation + workspace bytes of one rank (see module docstring)."""
    h, d = spec.hidden_size, spec.head_dim
    first, last = layers
    stage = spec.layers[first:last + 1]
    qkv = max(((spec.num_attention_heads // tp + 2 * accounting.kv_heads_per_rank(layer.attention_kv_heads, tp)) * d
               for layer in stage if layer.has_kv_cache), default=0)
    dff = max((accounting.ceil_div(layer.mlp_intermediate_size, tp) for layer in stage if layer.ffn is FFNKind.MLP),
              default=0)
    if any(layer.ffn is FFNKind.LINEAR for layer in stage):
        dff = max(dff, accounting.ceil_div(h, tp))
    per_token = ACTIVATION_BYTES * (3 * h + qkv + 3 * dff)
    total = ACTIVATION_FACTOR * max_num_tokens * per_token + CUDA_CONTEXT_BYTES
    if world_size > 1:
        total += COMM_BUFFER_BYTES
    if last_stage:
        # lm_head gathers full-vocab float32 logits; the runtime keeps a second copy for sampling
        total += 2 * max_batch_size * spec.vocab_size * LOGITS_BYTES
    return total


def _blocks(tokens: int, tokens_per_block: int) -> int:
    return accounting.ceil_div(tokens, tokens_per_block)


def _fmt_gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def _profiles_that_fit(spec: ModelSpec, precision: str) -> list[str]:
    names = []
    for prof in list_profiles():
        if precision not in prof.layouts:
            continue
        lay = prof.layout(precision, "throughput")
        if spec.num_attention_heads % lay.tp:
            continue
        worst = max(r.weight_bytes for r in accounting.all_ranks(spec, precision, tp=lay.tp, pp=lay.pp))
        if worst < 0.8 * prof.gpu.memory_bytes:
            names.append(prof.name)
    return names


def make_plan(spec: ModelSpec, profile: GpuProfile, *, precision: str | None = None, variant: str = "throughput",
              max_seq_len: int | None = None, max_batch_size: int | None = None, max_input_len: int | None = None,
              max_num_tokens: int | None = None, input_len: int = 2048, output_len: int = 1024,
              tp: int | None = None, pp: int | None = None) -> Plan:
    """Plan a build of `spec` on `profile`; NemoTrtError (exit 2) with a fix when it cannot work."""
    gpu = profile.gpu
    precision = precision or profile.recommended_precision
    if precision not in ("bf16", "fp8"):
        raise NemoTrtError(f"unknown precision {precision!r}", "use --precision bf16 or --precision fp8")
    if variant not in VARIANTS:
        raise NemoTrtError(f"unknown variant {variant!r}", f"use --variant {' or --variant '.join(VARIANTS)}")
    if precision == "fp8" and not gpu.fp8:
        raise NemoTrtError(
            f"FP8 is not available on {gpu.name} (compute capability {gpu.compute_capability}): TensorRT-LLM "
            "supports FP8 only on Ada/Hopper/Blackwell (SM 8.9+), Ampere has no FP8 tensor cores",
            "use --precision bf16 on this profile, or an FP8-capable profile such as h100x2 or h200x1",
        )
    layout = profile.layout(precision, variant)
    s = dict(layout.settings)
    reasons = dict(layout.reasons)
    warnings: list[str] = []

    # ---- overrides (flags win over the profile; every override is re-checked below) ----
    tp_size = tp if tp is not None else layout.tp
    pp_size = pp if pp is not None else layout.pp
    if tp is not None and tp != layout.tp:
        reasons["tp"] = f"set by --tp (profile: {layout.tp})"
    if pp is not None and pp != layout.pp:
        reasons["pp"] = f"set by --pp (profile: {layout.pp})"
    explicit = {"max_seq_len": max_seq_len, "max_batch_size": max_batch_size,
                "max_input_len": max_input_len, "max_num_tokens": max_num_tokens}
    for key, value in explicit.items():
        if value is not None:
            if value <= 0:
                raise NemoTrtError(f"--{key.replace('_', '-')} must be positive, got {value}",
                                   f"pass a positive --{key.replace('_', '-')}")
            reasons[key] = f"set by --{key.replace('_', '-')} (profile: {s[key]})"
            s[key] = value

    if tp_size < 1 or pp_size < 1:
        raise NemoTrtError(f"tp and pp must be >= 1 (got tp={tp_size}, pp={pp_size})", "pass --tp/--pp of 1 or more")
    world = tp_size * pp_size
    if world > gpu.count:
        raise NemoTrtError(
            f"tp×pp = {tp_size}×{pp_size} = {world} GPUs, but profile {profile.name} has {gpu.count}",
            f"use tp×pp <= {gpu.count}, or a profile with more GPUs",
        )
    if world < gpu.count:
        warnings.append(f"the plan uses {world} of the profile's {gpu.count} GPUs")
    if spec.num_attention_heads % tp_size:
        raise NemoTrtError(
            f"TP {tp_size} does not divide num_attention_heads={spec.num_attention_heads} of {spec.name}",
            "choose a TP size that divides the head count "
            f"({', '.join(str(t) for t in (1, 2, 4, 8) if spec.num_attention_heads % t == 0)})",
        )
    if pp_size > spec.num_layers:
        raise NemoTrtError(f"PP {pp_size} exceeds the model's {spec.num_layers} layers", "use a smaller --pp")
    kv_counts = sorted(set(spec.kv_head_counts))
    dup = [k for k in kv_counts if tp_size > k]
    if dup:
        warnings.append(
            f"TP {tp_size} > KV heads ({', '.join(map(str, dup))}) in some layers: TensorRT-LLM duplicates those K/V "
            "heads on every rank (dup_kv_weight), so per-rank KV bytes do not shrink with TP"
        )
    for k in kv_counts:
        if k >= tp_size and k % tp_size:
            raise NemoTrtError(f"TP {tp_size} does not divide the {k} KV heads of some layers",
                               "choose a TP size that divides every layer's KV head count")

    # ---- sequence limits ----
    model_max = spec.max_position_embeddings
    if s["max_seq_len"] > model_max:
        if max_seq_len is not None:
            raise NemoTrtError(
                f"--max-seq-len {max_seq_len} exceeds the model's max_position_embeddings ({model_max:,})",
                f"use --max-seq-len {model_max} or less",
            )
        warnings.append(f"profile max_seq_len {s['max_seq_len']} clamped to the model's {model_max}")
        reasons["max_seq_len"] = f"the model's max_position_embeddings (profile asks for {s['max_seq_len']})"
        s["max_seq_len"] = model_max
    if s["max_input_len"] >= s["max_seq_len"]:
        if max_input_len is not None:
            raise NemoTrtError(
                f"max_input_len {s['max_input_len']} must be smaller than max_seq_len {s['max_seq_len']} "
                "(max_seq_len counts prompt plus generated tokens)",
                f"use --max-input-len {s['max_seq_len'] // 2} or raise --max-seq-len",
            )
        reasons["max_input_len"] = (f"half of max_seq_len {s['max_seq_len']} "
                                    f"(profile value {s['max_input_len']} did not fit)")
        s["max_input_len"] = max(1, s["max_seq_len"] // 2)
    if input_len <= 0 or output_len <= 0:
        raise NemoTrtError("--input-len and --output-len must be positive", "pass positive token counts")
    if input_len > s["max_input_len"]:
        raise NemoTrtError(f"--input-len {input_len} exceeds max_input_len {s['max_input_len']}",
                           f"raise --max-input-len to at least {input_len}, or plan for shorter prompts")
    if input_len + output_len > s["max_seq_len"]:
        raise NemoTrtError(
            f"--input-len + --output-len = {input_len + output_len} exceeds max_seq_len {s['max_seq_len']}",
            f"raise --max-seq-len to at least {input_len + output_len}, or plan for shorter requests",
        )
    if not s["enable_chunked_context"] and s["max_num_tokens"] < s["max_input_len"]:
        raise NemoTrtError(
            f"max_num_tokens {s['max_num_tokens']} < max_input_len {s['max_input_len']} without chunked context",
            "enable chunked context or raise --max-num-tokens",
        )

    # ---- what TensorRT-LLM's builder will really do with these settings (configs/trtllm builder_rules) ----
    kv_dtype = "fp8" if precision == "fp8" else "bf16"
    _, overrides = apply_builder_rules(inputs_for(spec.architecture, tp=tp_size, precision=precision,
                                                  kv_cache_dtype=kv_dtype,
                                                  compute_capability=gpu.compute_capability, settings=s))
    for o in overrides:
        asked = reasons.get(o.setting)
        s[o.setting] = o.effective
        reasons[o.setting] = o.explain() + (f"; the profile asked for {o.requested}: {asked}" if asked else "")
    if s["use_fp8_context_fmha"] and not s["use_paged_context_fmha"]:
        raise NemoTrtError("profile enables use_fp8_context_fmha without use_paged_context_fmha",
                           "enable use_paged_context_fmha in the profile")
    if (s["enable_kv_cache_reuse"] or s["enable_chunked_context"]) and not s["use_paged_context_fmha"]:
        raise NemoTrtError("KV-cache reuse and chunked context need an engine built with use_paged_context_fmha",
                           "enable use_paged_context_fmha in the profile")

    reasons.setdefault("precision", f"the profile's recommended precision ({profile.reasons['recommended_precision']})"
                       if precision == profile.recommended_precision else "set by --precision")
    reasons["kv_cache_dtype"] = ("FP8 KV cache (quantize.py --kv_cache_dtype fp8, the nemotron_nas README recipe) "
                                 "halves KV bytes per token" if kv_dtype == "fp8"
                                 else "KV cache in the model dtype (bfloat16)")

    # ---- memory per rank ----
    gpu_bytes = gpu.memory_bytes
    tpb = s["tokens_per_block"]
    frac = s["kv_cache_free_gpu_mem_fraction"]
    ranks: list[RankPlan] = []
    for acc in accounting.all_ranks(spec, precision, tp=tp_size, pp=pp_size, kv_dtype=kv_dtype):
        act = activation_bytes(spec, tp=tp_size, max_num_tokens=s["max_num_tokens"],
                               max_batch_size=s["max_batch_size"], layers=acc.layers,
                               last_stage=acc.pp_rank == pp_size - 1, world_size=world)
        left = gpu_bytes - acc.weight_bytes - act
        if left <= 0:
            fixes = []
            if precision == "bf16" and gpu.fp8:
                fixes.append("--precision fp8 (halves the linear weights)")
            fits = [n for n in _profiles_that_fit(spec, precision) if n != profile.name]
            if fits:
                fixes.append(f"a bigger profile: {', '.join(fits)}")
            if world < gpu.count:
                fixes.append(f"more GPUs (tp×pp up to {gpu.count})")
            if s["max_num_tokens"] > 2048:
                fixes.append("a smaller --max-num-tokens")
            raise NemoTrtError(
                f"{spec.name} in {precision} does not fit {profile.name}: rank {acc.rank} needs "
                f"{_fmt_gb(acc.weight_bytes)} of weights + {_fmt_gb(act)} of activations/workspace, "
                f"but a {gpu.name} has {_fmt_gb(gpu_bytes)} ({gpu.memory_mib} MiB)",
                "use " + " or ".join(fixes) if fixes else "use a GPU profile with more memory",
            )
        free_kv = int(left * frac)
        kv_tokens = (free_kv // acc.kv_bytes_per_token) // tpb * tpb if acc.kv_bytes_per_token else 0
        ranks.append(RankPlan(
            rank=acc.rank, tp_rank=acc.tp_rank, pp_rank=acc.pp_rank, layers=acc.layers,
            weight_bytes=acc.weight_bytes, activation_bytes=act, kv_bytes_per_token=acc.kv_bytes_per_token,
            free_bytes_for_kv=free_kv, kv_tokens=kv_tokens, concurrent_sequences=0,
            attention_layers=acc.attention_layers, params=acc.params, tensors=acc.tensors,
            gpu_memory_bytes=gpu_bytes,
        ))

    with_kv = [r for r in ranks if r.kv_bytes_per_token]
    engine_tokens = min((r.kv_tokens for r in with_kv), default=0)
    if not with_kv:
        raise NemoTrtError(f"{spec.name} has no attention layer, so there is no KV cache to plan",
                           "check the model's block_configs")
    for r in ranks:
        if not r.kv_bytes_per_token:
            r.kv_tokens = engine_tokens
            warnings.append(
                f"PP stage {r.pp_rank} (layers {r.layers[0]}-{r.layers[1]}) holds no attention layer and needs no "
                "KV cache; whether the runtime accepts a KV-less stage is not verified"
            )
    if pp_size > 1:
        per_stage = [r.kv_bytes_per_token for r in ranks if r.tp_rank == 0]
        if max(per_stage) > 2 * max(1, min(per_stage)):
            warnings.append(
                "PP splits layers by count, not cost: KV bytes/token per stage are "
                f"{', '.join(f'{b:,}' for b in per_stage)}, so the busiest stage bounds throughput"
            )

    seq_tokens = s["max_seq_len"]
    if engine_tokens < seq_tokens:
        needed = max(r.kv_bytes_per_token for r in with_kv) * seq_tokens
        fixes = [f"--max-seq-len {max(tpb, engine_tokens // tpb * tpb)} or less"] if engine_tokens >= tpb else []
        if precision == "bf16" and gpu.fp8:
            fixes.append("--precision fp8 (FP8 weights and KV cache)")
        fits = [n for n in _profiles_that_fit(spec, precision) if n != profile.name]
        if fits:
            fixes.append(f"a bigger profile ({', '.join(fits)})")
        raise NemoTrtError(
            f"the KV cache holds only {engine_tokens:,} tokens per engine, less than one max_seq_len "
            f"sequence ({seq_tokens:,} tokens, {_fmt_gb(needed)} of KV per rank); TensorRT-LLM would fail "
            "at start-up ('maxTokensInPagedKvCache must be large enough')",
            "use " + " or ".join(fixes) if fixes else "use a GPU profile with more memory",
        )

    blocks_per_seq = _blocks(input_len + output_len, tpb)
    kv_limited = (engine_tokens // tpb) // blocks_per_seq
    concurrent = min(kv_limited, s["max_batch_size"])
    for r in ranks:
        r.concurrent_sequences = concurrent
    if kv_limited < s["max_batch_size"]:
        warnings.append(
            f"the KV cache holds {kv_limited} sequences of {input_len}+{output_len} tokens, fewer than "
            f"max_batch_size {s['max_batch_size']}: KV capacity, not the batch size, bounds concurrency"
        )

    build = BuildSettings(**s, reasons={k: v for k, v in reasons.items() if k in BuildSettings.model_fields})
    plan_reasons = {k: v for k, v in reasons.items() if k not in BuildSettings.model_fields}
    plan_reasons.update({f"gpu.{k}": profile.reasons[k] for k in ("memory_mib", "compute_capability", "fp8",
                                                                   "interconnect")})
    return Plan(
        model=spec.name, profile=profile.name, gpu_name=gpu.name, num_gpus=gpu.count,
        gpu_memory_mib=gpu.memory_mib, compute_capability=gpu.compute_capability,
        precision=precision, kv_cache_dtype=kv_dtype, variant=variant, tp=tp_size, pp=pp_size, world_size=world,
        build=build, ranks=ranks, input_len=input_len, output_len=output_len, warnings=warnings,
        reasons=plan_reasons, kv_tokens=engine_tokens, kv_limited_sequences=kv_limited,
        concurrent_sequences=concurrent, total_weight_bytes=sum(r.weight_bytes for r in ranks),
        activation_formula=ACTIVATION_FORMULA, architecture=spec.architecture,
        builder_overrides=[o.to_dict() for o in overrides],
        engine_implied=implied_settings(precision=precision, world_size=world, gemm_plugin=str(s["gemm_plugin"])),
    )
