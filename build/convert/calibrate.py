"""FP8 calibration of a BF16 checkpoint: activation and KV-cache ranges from real forward passes.

`reference` calibrator (default): the calibration prompts run through our PyTorch reference model
(`nemo_trt.reference`, module names == HF names); a forward pre-hook on every `nn.Linear` records
max |input| (-> `activation_scaling_factor = amax / 448`, the static per-tensor scale ModelOpt's
FP8_DEFAULT_CFG produces), and a forward hook on `k_proj` / `v_proj` records the KV range.
TensorRT-LLM caches K *after* RoPE; RoPE (gpt-neox layout) rotates the pairs (i, i + d/2), so
max_i sqrt(k_i^2 + k_{i+d/2}^2) bounds |k| after RoPE at any position — we use that bound, never
an under-estimate.

Two ways to run it (`method`), with bit-identical ranges (same micro-batches, same ops):
- `layerwise` (default): one decoder layer at a time from the source checkpoint, so memory is one
  layer plus the activations whatever the depth (`layerwise.forward_layerwise`).
- `whole`: the whole reference model in memory (float32 on CPU, bfloat16 on CUDA) — the check,
  and what needs about 2x (CPU) / 1x (CUDA) the checkpoint in memory.

`modelopt` calibrator: NVIDIA ModelOpt's `mtq.quantize(model, FP8_DEFAULT_CFG [+ FP8_KV_CFG])`
on the whole reference model, reading the amax of each `input_quantizer` (and the k/v output
quantizers). It needs `nvidia-modelopt` (not installed by default). Differences: ModelOpt
measures K after its own quantizer placement (the bmm inputs, post-RoPE) instead of our
bound, and may apply its own percentile/clip settings; weights are quantized identically
(per-tensor amax / 448) by nemo-trt in both cases.

Before anything is loaded, the memory the run needs is estimated (`calibration_plan`) and a run
that would not fit is refused with the fixes. Results are cached under $NEMO_TRT_CACHE/calibration
by (source fingerprint, prompts, settings), written atomically: a conversion that fails after
calibrating does not calibrate again, and Ctrl-C leaves no partial cache entry.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

import torch

from nemo_trt.build.calibration_plan import MICRO_BATCH_BYTES
from nemo_trt.build.convert.layerwise import (LayerLoader, RangeRecorder, forward_layerwise, forward_whole,
                                              make_batches, whole_model)
from nemo_trt.build.convert.prompts import MAX_TOKENS, calibration_tokens
from nemo_trt.errors import NemoTrtError

CALIBRATORS = ("reference", "modelopt")
METHODS = ("layerwise", "whole")
# Bump when the calibration maths or the micro-batching changes: cached results are then recomputed.
CALIBRATION_VERSION = 2

@dataclass(frozen=True)
class Calibration:
    act_amax: dict[str, float]   # HF linear module -> max |input|
    kv_amax: dict[int, float]    # layer -> max(|k| post-RoPE bound, |v|)
    settings: dict               # what determines the ranges (goes into the conversion's manifest)
    stats: dict = field(default_factory=dict, compare=False)  # tokens/s, seconds, cached: not an input


def check_choices(calibrator: str, method: str, device: str) -> None:
    if calibrator not in CALIBRATORS:
        raise NemoTrtError(f"unknown calibrator {calibrator!r}", f"use one of: {', '.join(CALIBRATORS)}")
    if method not in METHODS:
        raise NemoTrtError(f"unknown calibration method {method!r}", f"use one of: {', '.join(METHODS)}")
    if device not in MICRO_BATCH_BYTES:
        raise NemoTrtError(f"unknown device {device!r}", "use --device cpu or --device cuda")


def settings(prompts: list[str], calibrator: str, device: str, method: str = "layerwise",
             max_tokens: int = MAX_TOKENS) -> dict:
    """What determines the calibrated ranges (the conversion's manifest records it)."""
    check_choices(calibrator, method, device)
    digest = hashlib.sha256("\n".join(prompts).encode()).hexdigest()
    out: dict = {"calibrator": calibrator, "device": device, "prompts": len(prompts), "prompts_sha256": digest}
    if calibrator == "reference":
        out.update(method=method, max_tokens=max_tokens, micro_batch_bytes=MICRO_BATCH_BYTES[device],
                   version=CALIBRATION_VERSION)
    return out


def _device_dtype(device: str) -> tuple[torch.device, torch.dtype]:
    if device == "cuda":
        if not torch.cuda.is_available():
            raise NemoTrtError("--device cuda was given but no CUDA device is available", "use --device cpu")
        return torch.device("cuda"), torch.bfloat16
    if device != "cpu":
        raise NemoTrtError(f"unknown device {device!r}", "use --device cpu or --device cuda")
    return torch.device("cpu"), torch.float32


def calibrate(checkpoint: str | Path, prompts: list[str], *, device: str = "cpu", calibrator: str = "reference",
              kv: bool = True, max_tokens: int = MAX_TOKENS, method: str = "layerwise", progress: bool = False,
              cache: bool = True, check_memory: bool = True,
              report: Callable[[str], None] | None = None) -> Calibration:
    """Activation (and KV) ranges of `checkpoint` over `prompts`; see the module docstring. `progress` shows
    a rich bar per layer; `report(line)` gets the same news as text (the build's stage display)."""
    from nemo_trt.build import calibration_plan as cp
    from nemo_trt.build.convert.source import SourceWeights

    check_choices(calibrator, method, device)
    src = SourceWeights(checkpoint)
    spec = src.spec
    token_lists, how = calibration_tokens(src.directory, prompts, spec.vocab_size, max_tokens)
    ident = {**settings(prompts, calibrator, device, method, max_tokens), "tokenization": how,
             "tokens": sum(len(t) for t in token_lists)}
    key = cache_key(src.ckpt.fingerprint(), ident, kv)
    if cache and (hit := load_cached(key)) is not None:
        return hit
    dev, dtype = _device_dtype(device)
    if calibrator == "modelopt":
        _modelopt()  # missing: say so before loading the model
    route = "modelopt" if calibrator == "modelopt" else method
    if check_memory:
        lengths = [len(t) for t in token_lists]
        cp.require_fits(cp.estimate_route(spec, lengths, route, device),
                        alternatives=[cp.estimate_route(spec, lengths, "layerwise", d) for d in cp.DEVICES])
    t0 = time.perf_counter()
    if calibrator == "modelopt":
        act, kvs = _calibrate_modelopt(whole_model(src, dev, dtype), token_lists, dev)
        batches_run = len(token_lists)
    else:
        batches = make_batches(token_lists, spec, torch.empty((), dtype=dtype).element_size(),
                               MICRO_BATCH_BYTES[device])
        recorder = RangeRecorder(spec.head_dim, kv)
        if method == "whole":
            forward_whole(whole_model(src, dev, dtype), batches, recorder)
        else:
            loader = LayerLoader(src, dev, dtype, resident=dev.type == "cuda")
            with _LayerProgress(progress, report, spec.num_layers, ident["tokens"], str(dev)) as on_layer:
                forward_layerwise(loader, batches, recorder, on_layer)
        act, kvs = recorder.act_amax, recorder.kv_amax
        batches_run = len(batches)
    seconds = time.perf_counter() - t0
    result = Calibration(act, kvs, ident, {"seconds": round(seconds, 3), "micro_batches": batches_run,
                                          "tokens_per_s": round(ident["tokens"] / max(seconds, 1e-9), 1),
                                          "cached": False, "cache_key": key})
    if cache:
        store_cached(key, result)
    return result


# ---- progress ----------------------------------------------------------------------------------
class _LayerProgress:
    """Per decoder layer: a rich bar (layer i/N, its kind, tokens/s through a layer) and/or a one-line
    report for a caller's own progress display (the build's stage spinner)."""

    def __init__(self, show: bool, report: Callable[[str], None] | None, layers: int, tokens: int, device: str):
        self.show, self.report, self.layers, self.tokens, self.device = show, report, layers, tokens, device

    def __enter__(self) -> Callable | None:
        self.start = self.last = time.perf_counter()
        if self.show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            from nemo_trt.console import err_console

            self.bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=err_console,
                                transient=True)
            self.bar.__enter__()
            self.task = self.bar.add_task(f"calibrating {self.tokens:,} tokens on {self.device}",
                                          total=self.layers, rate="")
        return self.on_layer if self.show or self.report else None

    def on_layer(self, index: int, layer, tokens: int) -> None:
        now = time.perf_counter()
        rate = tokens * (index + 1) / max(now - self.start, 1e-9)
        what = (f"{rate:,.0f} tok/s per layer (layer {index}: {layer.attention.value}+{layer.ffn.value}, "
                f"{now - self.last:.1f}s)")
        self.last = now
        if self.show:
            self.bar.update(self.task, advance=1, rate=what)
        if self.report:
            self.report(f"layer {index + 1}/{self.layers} on {self.device}, {what}")

    def __exit__(self, *exc) -> None:
        if self.show:
            self.bar.__exit__(*exc)


# ---- cache ---------------------------------------------------------------------------------------
def cache_key(fingerprint: dict, ident: dict, kv: bool) -> str:
    blob = json.dumps({"source": fingerprint, "settings": ident, "kv": kv}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cache_path(key: str) -> Path:
    from nemo_trt.build.tiny import cache_root

    return cache_root() / "calibration" / f"{key}.json"


def load_cached(key: str) -> Calibration | None:
    """The cached result, or None (missing, unreadable or not ours: then it is recomputed)."""
    path = cache_path(key)
    try:
        data = json.loads(path.read_text())
        if data.get("key") != key:
            return None
        act = {str(k): float(v) for k, v in data["act_amax"].items()}
        kvs = {int(k): float(v) for k, v in data["kv_amax"].items()}
        return Calibration(act, kvs, dict(data["settings"]), {**data.get("stats", {}), "cached": True,
                                                              "cache_path": str(path)})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def store_cached(key: str, result: Calibration) -> Path | None:
    """Write the result atomically; a cache that cannot be written only costs a recalibration."""
    from nemo_trt.atomic import atomic_write_text

    path = cache_path(key)
    data = {"key": key, "settings": result.settings, "act_amax": result.act_amax,
            "kv_amax": {str(k): v for k, v in result.kv_amax.items()}, "stats": result.stats}
    try:
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    except OSError:
        return None
    return path

def _modelopt():
    try:
        import modelopt.torch.quantization as mtq
    except ImportError as exc:
        raise NemoTrtError("--calibrator modelopt needs NVIDIA ModelOpt, which is not installed",
                           "pip install nvidia-modelopt, or use the built-in --calibrator reference") from exc
    return mtq


def _calibrate_modelopt(model, token_lists, dev):  # pragma: no cover - needs nvidia-modelopt
    mtq = _modelopt()
    cfg = {**mtq.FP8_DEFAULT_CFG}
    cfg["quant_cfg"] = {**cfg["quant_cfg"], **mtq.FP8_KV_CFG["quant_cfg"], "*lm_head*": {"enable": False}}

    def loop(m):
        with torch.inference_mode():
            for ids in token_lists:
                m(torch.tensor([ids], device=dev))

    mtq.quantize(model, cfg, forward_loop=loop)
    act: dict[str, float] = {}
    kvs: dict[int, float] = {}
    for name, mod in model.named_modules():
        q = getattr(mod, "input_quantizer", None)
        if q is not None and getattr(q, "amax", None) is not None:
            act[name] = float(q.amax.max())
        for attr in ("k_bmm_quantizer", "v_bmm_quantizer", "output_quantizer"):
            oq = getattr(mod, attr, None)
            if oq is not None and getattr(oq, "amax", None) is not None and ".self_attn" in name:
                layer = int(name.split(".")[2])
                kvs[layer] = max(kvs.get(layer, 0.0), float(oq.amax.max()))
    return act, kvs
