"""FP8 calibration, planned: prompts and tokens, memory and time per route and device, before it runs.

FP8 weights from a BF16 checkpoint need activation ranges, measured by running calibration
prompts through the model (`nemo_trt.build.convert.calibrate`). Three routes:

    layerwise  one decoder layer at a time from the checkpoint (the default): on CPU float32 with
               one linear materialised at a time, on CUDA bfloat16 with one layer on the GPU
    whole      the whole reference model in memory (float32 on CPU, bfloat16 on one GPU)
    modelopt   NVIDIA ModelOpt on the whole model (per prompt)

Memory (bytes; e = 4 on CPU, 2 on CUDA):
    layerwise CPU   runtime + hidden states of every micro-batch + RoPE/masks
                    + largest linear x e + one read chunk + activations of the largest micro-batch
    layerwise CUDA  host: runtime + largest source tensor (mapped while it is copied to the GPU)
                    device: CUDA context + largest layer x 2 + hidden states + RoPE/masks + activations
    whole / modelopt  host (CPU) or device (CUDA): every parameter x e + activations + hidden states
Time: FLOPs (2 x parameters x tokens of every micro-batch, padding included, + attention's
4 x S^2 x heads x head_dim per sequence) at an assumed rate, plus reading the weights from disk
(and, on CUDA, copying them to the GPU). The rates are assumptions, listed in every estimate.

`require_fits` refuses a run whose estimate exceeds what this machine (or GPU) has available,
with the estimate and the other routes. No torch here: `plan` and the dry runs call it.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from collections.abc import Sequence

from pydantic import BaseModel

from nemo_trt.build.spec import AttentionKind, ModelSpec
from nemo_trt.errors import NemoTrtError

MiB = 1024 * 1024
GB = 1e9
ROUTES = ("layerwise", "whole", "modelopt")
DEVICES = ("cpu", "cuda")
# Activations of one micro-batch: float32 on CPU, bfloat16 on CUDA (part of the calibration settings).
MICRO_BATCH_BYTES = {"cpu": 768 * MiB, "cuda": 4096 * MiB}
READ_CHUNK_BYTES = 64 * MiB      # rows of a source tensor copied per step into the float32 weight buffer
RUNTIME_BYTES = {"cpu": 450 * MiB,   # python + torch + transformers, measured ~360 MB resident
                 "cuda": 2560 * MiB}  # + the CUDA runtime, cuBLAS and kernels mapped on the host
CUDA_CONTEXT_BYTES = 1024 * MiB  # device side: context + cuBLAS workspaces
MARGIN = 1.15                    # allocator slack on the activations

# Rates for the time estimate (assumptions, printed with every estimate).
CPU_GFLOPS_PER_CORE = 30.0       # float32 incl. per-layer overheads: between loaded (17) and quiet GEMMs (55-95)
DISK_GB_PER_S = 1.0              # reading the checkpoint once (cold cache; NVMe is 2-3x faster)
H2D_GB_PER_S = 10.0              # pageable host -> GPU copies
GPU_EFFICIENCY = 0.3             # of dense BF16 peak, for micro-batches of ~1-2k tokens
# Dense BF16 tensor-core peak (NVIDIA datasheets: H100/H200 SXM 989 TFLOPS, A100 312, L40S 362, B200 2250).
GPU_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "B200": 2250.0}
PREQUANTIZED = "nvidia/Llama-3_3-Nemotron-Super-49B-v1-FP8"


class RouteEstimate(BaseModel):
    route: str                  # layerwise | whole | modelopt
    device: str                 # cpu | cuda
    dtype: str                  # float32 | bfloat16
    micro_batches: int
    host_bytes: int             # peak RAM of the calibrating process
    device_bytes: int           # peak GPU memory (0 on CPU)
    tflop: float
    read_bytes: int             # checkpoint bytes read
    seconds: dict[str, float]   # where -> seconds ("cpu x2 cores", "H100", ...)
    note: str = ""              # e.g. that it does not fit the profile's GPU

    def summary(self) -> str:
        mem = f"{self.host_bytes / GB:.1f} GB RAM"
        if self.device == "cuda":
            mem += f" + {self.device_bytes / GB:.1f} GB GPU"
        times = ", ".join(f"{duration(s)} on {k}" for k, s in self.seconds.items())
        return f"{self.route} on {self.device}: {mem}; {times}" + (f" ({self.note})" if self.note else "")


class CalibrationPlan(BaseModel):
    needed: bool
    why: str
    prompts: int = 0
    prompt_source: str = ""
    tokens: int = 0
    longest_prompt: int = 0
    tokenization: str = ""
    route: str = ""             # what this conversion runs: layerwise | whole | modelopt
    device: str = ""            # ... on cpu | cuda
    routes: list[RouteEstimate] = []
    assumptions: list[str] = []


# ---- micro-batches (pure; layerwise.make_batches builds the tensors from these groups) -----------
def token_bytes(spec: ModelSpec, dtype_bytes: int, seq_len: int) -> int:
    """Activation bytes one token of a micro-batch of `seq_len`-token sequences holds at the widest layer.

    Attention phase: normed input, q/k/v, rotated q/k and RoPE temporaries, KV heads repeated to every
    query head, scores + masked scores + softmax (heads x seq_len each), output and its reshape, o_proj
    output, residual. MLP phase: normed input, gate, act(gate), up, product, down_proj output, residual.
    """
    h, d, heads = spec.hidden_size, spec.head_dim, spec.num_attention_heads
    worst = 0
    for layer in spec.layers:
        attn = 0
        if layer.attention is AttentionKind.ATTENTION:
            kv = int(layer.num_kv_heads or heads) * d
            attn = 3 * h + 7 * heads * d + 4 * kv + 3 * heads * seq_len
        elif layer.attention is AttentionKind.LINEAR:
            attn = 3 * h
        worst = max(worst, attn, 3 * h + 4 * int(layer.intermediate_size or h))
    return worst * dtype_bytes


def batch_bytes(spec: ModelSpec, dtype_bytes: int, rows: int, seq_len: int) -> int:
    return rows * seq_len * token_bytes(spec, dtype_bytes, seq_len)


def pack(lengths: Sequence[int], spec: ModelSpec, dtype_bytes: int, budget_bytes: int) -> list[list[int]]:
    """Prompt indices per micro-batch: longest first, packed while the activations stay under the
    budget (a prompt that alone exceeds it runs alone). The first index of a group is its longest."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    for i in order:
        if groups and batch_bytes(spec, dtype_bytes, len(groups[-1]) + 1, lengths[groups[-1][0]]) <= budget_bytes:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


# ---- estimates -----------------------------------------------------------------------------------
def _layer_params(spec: ModelSpec) -> dict[int, int]:
    out: dict[int, int] = {}
    for name, shape in spec.hf_tensor_shapes().items():
        if name.startswith("model.layers."):
            i = int(name.split(".")[2])
            out[i] = out.get(i, 0) + math.prod(shape)
    return out


def _source_bytes_per_param(spec: ModelSpec) -> int:
    return 4 if spec.torch_dtype in ("float32", "fp32") else 2


def estimate_route(spec: ModelSpec, lengths: Sequence[int], route: str, device: str,
                   gpus: Sequence[str] = ()) -> RouteEstimate:
    """Memory and time of one calibration route for prompts of these token lengths."""
    if route not in ROUTES or device not in DEVICES:
        raise NemoTrtError(f"unknown calibration route {route!r} on {device!r}",
                           f"use one of {', '.join(ROUTES)} on {' or '.join(DEVICES)}")
    e = 4 if device == "cpu" else 2
    h, d = spec.hidden_size, spec.head_dim
    groups = ([[i] for i in range(len(lengths))] if route == "modelopt"
              else pack(lengths, spec, e, MICRO_BATCH_BYTES[device]))
    shapes = [(len(g), lengths[g[0]]) for g in groups]           # (rows, padded length)
    hidden = sum(r * s * h * e for r, s in shapes)
    positional = sum(2 * r * s * d * e + s * s * e for r, s in shapes)
    act = int(max(batch_bytes(spec, e, r, s) for r, s in shapes) * MARGIN) if shapes else 0
    layer_params = _layer_params(spec)
    all_params = sum(math.prod(s) for s in spec.hf_tensor_shapes().values())
    src_e = _source_bytes_per_param(spec)
    largest_tensor = max(math.prod(s) for s in spec.hf_tensor_shapes().values()) * src_e
    largest_linear = max((math.prod(s) for n, s in spec.hf_tensor_shapes().items()
                          if n.startswith("model.layers.") and len(s) == 2), default=0)
    host, dev = RUNTIME_BYTES[device], 0
    if route == "layerwise":
        read = sum(layer_params.values()) * src_e
        if device == "cpu":
            host += hidden + positional + largest_linear * e + READ_CHUNK_BYTES + act
        else:
            host += largest_tensor
            dev = CUDA_CONTEXT_BYTES + max(layer_params.values(), default=0) * e + hidden + positional + act
    else:
        read = all_params * src_e
        if device == "cpu":
            host += all_params * e + largest_tensor + hidden + positional + act
        else:
            host += largest_tensor
            dev = CUDA_CONTEXT_BYTES + all_params * e + hidden + positional + act
    flops = 0.0
    for rows, seq in shapes:
        flops += 2.0 * sum(layer_params.values()) * rows * seq
        flops += sum(4.0 * rows * seq * seq * spec.num_attention_heads * d
                     for layer in spec.layers if layer.attention is AttentionKind.ATTENTION)
    seconds: dict[str, float] = {}
    if device == "cpu":
        cores = cpu_cores()
        seconds[f"cpu x{cores} cores"] = flops / (cores * CPU_GFLOPS_PER_CORE * 1e9) + read / (DISK_GB_PER_S * GB)
    else:
        for gpu in gpus or list(GPU_BF16_TFLOPS):
            peak = GPU_BF16_TFLOPS.get(gpu)
            if peak is None:
                continue
            seconds[gpu] = (flops / (peak * 1e12 * GPU_EFFICIENCY) + read / (DISK_GB_PER_S * GB)
                            + read / (H2D_GB_PER_S * GB))
    return RouteEstimate(route=route, device=device, dtype="float32" if e == 4 else "bfloat16",
                         micro_batches=len(groups), host_bytes=int(host), device_bytes=int(dev),
                         tflop=round(flops / 1e12, 3), read_bytes=int(read),
                         seconds={k: round(v, 1) for k, v in seconds.items()})


def assumptions() -> list[str]:
    return [f"CPU: {CPU_GFLOPS_PER_CORE:.0f} GFLOP/s float32 per core, all cores used (bench/results/calibrate.md: "
            "17 per core measured on a shared 2-core machine under load, 55-95 for bare GEMMs when quiet)",
            f"GPU: {GPU_EFFICIENCY:.0%} of the dense BF16 peak "
            f"({', '.join(f'{k} {v:.0f}' for k, v in GPU_BF16_TFLOPS.items())} TFLOP/s), "
            f"weights copied to the GPU at {H2D_GB_PER_S:.0f} GB/s",
            f"checkpoint read once from disk at {DISK_GB_PER_S:.1f} GB/s",
            f"memory: runtime {RUNTIME_BYTES['cpu'] / GB:.2f} GB (CPU) / {RUNTIME_BYTES['cuda'] / GB:.2f} GB "
            f"(with CUDA) + weights + hidden states + {MARGIN:.2f}x the largest micro-batch's activations"]


def plan_calibration(spec: ModelSpec, source_dir: str | Path, *, precision: str, kv_cache_dtype: str,
                     gpus: Sequence[str] = (), gpu_memory_bytes: int | None = None,
                     calib_prompts: str | Path | None = None, device: str = "cpu",
                     method: str = "layerwise", calibrator: str = "reference") -> CalibrationPlan:
    """The calibration stage of a conversion to `precision` / `kv_cache_dtype` (needed or not, and why)."""
    from nemo_trt.build.convert.prompts import calibration_tokens, load_prompts

    if precision != "fp8" and kv_cache_dtype != "fp8":
        return CalibrationPlan(needed=False, why="BF16 weights and KV cache: nothing to calibrate")
    if source_quantized(Path(source_dir), spec):
        return CalibrationPlan(needed=False, why="the checkpoint is ModelOpt FP8: its scales are converted, "
                                                 "no calibration")
    prompts = load_prompts(calib_prompts)
    token_lists, how = calibration_tokens(Path(source_dir), prompts, spec.vocab_size)
    lengths = [len(t) for t in token_lists]
    route = "modelopt" if calibrator == "modelopt" else method
    pairs = [("layerwise", "cpu"), ("layerwise", "cuda"), ("whole", "cpu"), ("whole", "cuda")]
    if (route, device) not in pairs:
        pairs.append((route, device))
    routes = [estimate_route(spec, lengths, r, dev, gpus) for r, dev in pairs]
    for r in routes:
        if r.device == "cuda" and gpu_memory_bytes and r.device_bytes > gpu_memory_bytes:
            r.note = f"does not fit one {'/'.join(gpus) or 'GPU'} ({gpu_memory_bytes / GB:.1f} GB)"
        elif r.route == "whole" and r.device == "cpu":
            r.note = "the check path: about 2x the checkpoint in RAM"
    what = "FP8 weights" if precision == "fp8" else "an FP8 KV cache"
    return CalibrationPlan(
        needed=True, why=f"{what} from a {spec.torch_dtype} checkpoint: activation"
                         f"{' and KV' if kv_cache_dtype == 'fp8' else ''} ranges from calibration prompts",
        prompts=len(prompts), prompt_source=str(calib_prompts) if calib_prompts else "built-in varied set",
        tokens=sum(lengths), longest_prompt=max(lengths), tokenization=how, route=route, device=device,
        routes=routes, assumptions=assumptions())


def chosen(cal: CalibrationPlan) -> RouteEstimate:
    """The estimate of the route the conversion runs."""
    return next(r for r in cal.routes if (r.route, r.device) == (cal.route, cal.device))


def check_here(cal: CalibrationPlan) -> str:
    """'ok', or 'refused: …' — what a real calibration on this machine would meet (for dry runs)."""
    if not cal.needed:
        return "ok"
    if cal.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "refused: no CUDA device here (--device cuda)"
    try:
        require_fits(chosen(cal), alternatives=cal.routes)
    except NemoTrtError as exc:
        return f"refused: {exc.problem}"
    return "ok"


def source_quantized(directory: Path, spec: ModelSpec) -> bool:
    if not (directory / "hf_quant_config.json").is_file() and not spec.raw_config.get("quantization_config"):
        return False
    from nemo_trt.build.convert.source import read_source_quant

    return read_source_quant(directory, spec).quant_algo == "FP8"


# ---- what this machine has -------------------------------------------------------------------
def cpu_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def available_host_bytes() -> int:
    """RAM a new allocation can get: MemAvailable, capped by a cgroup v2 limit."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            room = int(limit) - used
            avail = room if avail is None else min(avail, room)
    except (OSError, ValueError):
        pass
    return avail if avail is not None else 1 << 62


def available_device_bytes() -> int:
    import torch

    free, _total = torch.cuda.mem_get_info()
    return int(free)


def require_fits(est: RouteEstimate, *, alternatives: Sequence[RouteEstimate] = ()) -> None:
    """Refuse (exit 2, before anything is loaded) a calibration that would not fit here."""
    short = []
    host = available_host_bytes()
    if est.host_bytes > host:
        short.append(f"about {est.host_bytes / GB:.1f} GB of RAM, and this machine has {host / GB:.1f} GB available")
    if est.device == "cuda":
        dev = available_device_bytes()
        if est.device_bytes > dev:
            short.append(f"about {est.device_bytes / GB:.1f} GB of GPU memory, and the GPU has {dev / GB:.1f} GB free")
    if not short:
        return
    raise NemoTrtError(f"FP8 calibration ({est.route} on {est.device}, {est.micro_batches} micro-batch(es)) needs "
                       + " and ".join(short), fixes(est, alternatives))


def fixes(est: RouteEstimate, alternatives: Sequence[RouteEstimate] = ()) -> str:
    by = {(a.route, a.device): a for a in alternatives}
    out = []
    if (est.route, est.device) != ("layerwise", "cpu"):
        alt = by.get(("layerwise", "cpu"))
        out.append("calibrate layer by layer on the CPU (the default: --calib-method layerwise --device cpu"
                   + (f"; about {alt.host_bytes / GB:.1f} GB here" if alt else "") + ")")
    if est.device == "cpu" or est.route != "layerwise":
        alt = by.get(("layerwise", "cuda"))
        out.append("calibrate on a GPU (--device cuda, or build --calib-device cuda; one layer on the GPU at a time"
                   + (f", about {alt.device_bytes / GB:.1f} GB" if alt else "") + ")")
    if est.route == "layerwise":
        out.append("use fewer or shorter --calib-prompts (the hidden states of every prompt stay in memory)")
    out.append(f"or convert NVIDIA's pre-quantized FP8 checkpoint ({PREQUANTIZED}): nemo-trt takes its ModelOpt "
               "scales as they are, with no calibration")
    return "; ".join(out)


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
