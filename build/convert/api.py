"""`convert_checkpoint`: validate, plan, (calibrate), stream rank files, manifest, atomic rename."""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from collections.abc import Callable

from nemo_trt.atomic import atomic_dir
from nemo_trt.build.convert import manifest as mf
from nemo_trt.build.convert.converter import (KV_DTYPES, PRECISIONS, QuantSettings, plan_jobs, total_bytes,
                                              write_config, write_rank_files)
from nemo_trt.build.convert.trtllm_config import DTYPE_NAMES, make_config, rank_file
from nemo_trt.build.convert.weight_map import check_parallelism
from nemo_trt.errors import NemoTrtError

if TYPE_CHECKING:  # pragma: no cover
    from nemo_trt.build.convert.calibrate import Calibration


@dataclass(frozen=True)
class ConversionResult:
    output: Path
    tp: int
    pp: int
    precision: str
    kv_cache_dtype: str
    up_to_date: bool                  # True: nothing was done, the output already matched
    files: dict[str, str] = field(default_factory=dict)   # file -> sha256
    bytes_written: int = 0
    seconds: float = 0.0
    calibration: dict | None = None

    def to_dict(self) -> dict:
        return {"output": str(self.output), "tp": self.tp, "pp": self.pp, "precision": self.precision,
                "kv_cache_dtype": self.kv_cache_dtype, "up_to_date": self.up_to_date, "files": self.files,
                "bytes_written": self.bytes_written, "seconds": round(self.seconds, 3),
                "calibration": self.calibration}


def convert_checkpoint(checkpoint: str | Path, output: str | Path, *, tp: int, pp: int = 1,
                       precision: str = "bf16", kv_cache_dtype: str | None = None, workers: int = 1,
                       force: bool = False, calib_prompts: str | Path | None = None, device: str = "cpu",
                       progress: bool = True, calibrator: str = "reference", calib_method: str = "layerwise",
                       calibration: Calibration | None = None,
                       on_stage: Callable[[str, str], None] | None = None) -> ConversionResult:
    """See the package docstring. `calibration` (a calibrate.Calibration) supplies precomputed activation /
    KV ranges and skips the calibration pass (its `settings` go into the manifest). `on_stage(stage, message)`
    is told when calibration ("calibrate") and writing ("convert") start."""
    from nemo_trt.build.convert import calibrate as cal
    from nemo_trt.build.convert.prompts import load_prompts
    from nemo_trt.build.convert.source import SourceWeights

    t0 = time.perf_counter()
    if precision not in PRECISIONS:
        raise NemoTrtError(f"unknown precision {precision!r}", "use --precision bf16 or --precision fp8")
    kv_cache_dtype = kv_cache_dtype or "bf16"
    if kv_cache_dtype not in KV_DTYPES:
        raise NemoTrtError(f"unknown KV-cache dtype {kv_cache_dtype!r}", "use --kv-cache-dtype bf16 or fp8")
    if workers < 1:
        raise NemoTrtError(f"--workers must be >= 1, got {workers}", "pass --workers 1 or more")
    src = SourceWeights(checkpoint)  # validates config, shards, names, shapes, dtypes, quant config
    spec = src.spec
    check_parallelism(spec, tp, pp)
    dtype = output_dtype(spec, precision)
    if src.quantized and kv_cache_dtype == "fp8" and any(src.kv_scale(layer.index) is None
                                                          for layer in spec.attention_layers):
        raise NemoTrtError("the FP8 checkpoint has no k_scale/v_scale for an FP8 KV cache",
                           "use --kv-cache-dtype bf16, "
                           "or convert the BF16 checkpoint (nemo-trt calibrates the KV cache)")
    needs_calibration = not src.quantized and (precision == "fp8" or kv_cache_dtype == "fp8")
    prompts = load_prompts(calib_prompts) if needs_calibration and calibration is None else None
    calib_settings = (calibration.settings if calibration is not None and needs_calibration else
                      cal.settings(prompts, calibrator, device, calib_method) if prompts is not None else None)
    plan = {"tp": tp, "pp": pp, "precision": precision, "kv_cache_dtype": kv_cache_dtype, "dtype": dtype,
            "source_quantization": src.quant.quant_algo, "calibration": calib_settings}
    inputs = mf.make_inputs(src.ckpt.fingerprint(), plan)
    output = Path(output)
    if output.exists() and not force:
        if mf.is_up_to_date(output, inputs):
            return ConversionResult(output, tp, pp, precision, kv_cache_dtype, True,
                                    {n: f["sha256"] for n, f in (mf.load_manifest(output) or {})["files"].items()},
                                    0, time.perf_counter() - t0, calib_settings)
        raise NemoTrtError(f"{output} already exists and was made from other inputs (or is not a nemo-trt conversion)",
                           "pass --force to replace it, or choose another --output")

    if not needs_calibration:
        calibration = None
    elif prompts is not None:  # needed and not supplied: calibrate now
        if on_stage:
            on_stage("calibrate", f"FP8 ranges from {len(prompts)} prompts, {calib_method} on {device}")
        # Refuses (before loading anything) a run that would not fit in memory; cached by source + settings.
        calibration = cal.calibrate(checkpoint, prompts, device=device, calibrator=calibrator, method=calib_method,
                                    kv=kv_cache_dtype == "fp8", progress=progress,
                                    report=(lambda line: on_stage("calibrate", line)) if on_stage else None)
    q = (QuantSettings(precision, kv_cache_dtype, dtype, calibration.act_amax, calibration.kv_amax)
         if calibration is not None else QuantSettings(precision, kv_cache_dtype, dtype))

    total = total_bytes(spec, tp, pp, q)
    if on_stage:
        on_stage("convert", f"{src.directory} -> {output} (tp{tp} pp{pp} {precision})")
    remove_stale_partials(output)
    with atomic_dir(output, replace=force) as tmp:
        (tmp / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
        files = {"config.json": write_config(tmp, make_config(spec, tp, pp, precision=precision,
                                                              kv_cache_dtype=kv_cache_dtype, dtype=dtype))}
        jobs = plan_jobs(tp, pp, workers, str(src.directory), str(tmp), q)
        files.update(_with_progress(jobs, workers, total, progress, output.name))
        extra = {"calibration_result": {"settings": calibration.settings, "tokens": calibration.settings.get("tokens"),
                                        "stats": calibration.stats}} if calibration else None
        mf.write_manifest(tmp, inputs, files, extra)
        (tmp / OWNER_FILE).unlink()
    return ConversionResult(output, tp, pp, precision, kv_cache_dtype, False, files, total,
                            time.perf_counter() - t0,
                            {**calibration.settings, "stats": calibration.stats} if calibration else calib_settings)


def output_dtype(spec, precision: str) -> str:
    """Activation / unquantized dtype of the converted checkpoint."""
    dtype = DTYPE_NAMES.get(spec.torch_dtype, "bfloat16")
    return "bfloat16" if precision == "fp8" and dtype == "float32" else dtype  # FP8 GEMMs: 16-bit activations


def describe_conversion(checkpoint: str | Path, output: str | Path, *, tp: int, pp: int = 1, precision: str = "bf16",
                        kv_cache_dtype: str | None = None, calib_prompts: str | Path | None = None,
                        device: str = "cpu", calibrator: str = "reference", calib_method: str = "layerwise",
                        gpus: tuple[str, ...] = (), gpu_memory_bytes: int | None = None) -> dict:
    """What `convert_checkpoint` would do, without reading weights or writing anything (`convert --dry-run`):
    the layout, the files and bytes, and the calibration stage with its estimates and whether it fits here."""
    from nemo_trt.build import calibration_plan as cp
    from nemo_trt.build.convert.calibrate import check_choices
    from nemo_trt.build.spec import ModelSpec
    from nemo_trt.model_facts import resolve_model

    if precision not in PRECISIONS:
        raise NemoTrtError(f"unknown precision {precision!r}", "use --precision bf16 or --precision fp8")
    kv_cache_dtype = kv_cache_dtype or "bf16"
    if kv_cache_dtype not in KV_DTYPES:
        raise NemoTrtError(f"unknown KV-cache dtype {kv_cache_dtype!r}", "use --kv-cache-dtype bf16 or fp8")
    check_choices(calibrator, calib_method, device)
    hf_dir = resolve_model(checkpoint)
    spec = ModelSpec.from_path(hf_dir)
    check_parallelism(spec, tp, pp)
    dtype = output_dtype(spec, precision)
    total = total_bytes(spec, tp, pp, QuantSettings(precision, kv_cache_dtype, dtype))
    cal = cp.plan_calibration(spec, hf_dir, precision=precision, kv_cache_dtype=kv_cache_dtype, gpus=gpus,
                              gpu_memory_bytes=gpu_memory_bytes, calib_prompts=calib_prompts, device=device,
                              method=calib_method, calibrator=calibrator)
    output = Path(output).absolute()
    has_weights = any(hf_dir.glob("*.safetensors"))
    return {"dry_run": True, "checkpoint": str(hf_dir), "output": str(output), "tp": tp, "pp": pp,
            "precision": precision, "kv_cache_dtype": kv_cache_dtype, "dtype": dtype, "bytes": total,
            "writes": [str(output / n) for n in ("config.json", *(rank_file(r) for r in range(tp * pp)),
                                                  mf.MANIFEST)],
            "calibration": cal.model_dump(),
            "real_run_here": cp.check_here(cal) if has_weights else
            "refused: no *.safetensors in the checkpoint directory (a config only: dry runs only)"}


OWNER_FILE = ".nemo-trt-owner"


def remove_stale_partials(output: Path) -> list[Path]:
    """Delete temporary siblings left by a killed conversion (kill -9 cannot clean up after itself).

    Only directories this converter made (they hold OWNER_FILE) whose process is gone on this host
    are removed; a conversion still running elsewhere keeps its directory.
    """
    import shutil

    removed = []
    for tmp in output.absolute().parent.glob(f".{output.name}.*.partial"):
        try:
            host, pid = (tmp / OWNER_FILE).read_text().split()
        except (OSError, ValueError):
            continue
        if host != socket.gethostname():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except (PermissionError, ValueError):
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


def _with_progress(jobs, workers: int, total: int, show: bool, label: str) -> dict[str, str]:
    if not show:
        return write_rank_files(jobs, workers, None)
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    from nemo_trt.console import err_console

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task(f"converting → {label}", total=total)
        return write_rank_files(jobs, workers, lambda n: bar.advance(task, n))
