"""TensorRT-LLM checkpoint -> TensorRT engines, one per rank, with `trtllm-build`.

Why the `trtllm-build` executable and not the Python API (`tensorrt_llm.builder.build`):
  * process isolation: the build loads tens of GB of weights, initialises CUDA/MPI and,
    with --workers, forks a process pool; a crash or OOM kills the child, not nemo-trt,
    and nothing of it stays resident in our process afterwards;
  * the exact command line is the contract: it is what NVIDIA documents (nemotron_nas
    README), what users rerun by hand to reproduce or debug a build, and what we record
    verbatim in engines/engine_manifest.json;
  * its flags are checked here against the flag set of the targeted release
    (configs/trtllm/<version>.yaml), so a flag that does not exist fails in CI on a CPU
    machine rather than after an hour on 8 GPUs;
  * nothing needs `import tensorrt_llm`, so the command is built and tested anywhere.

`trtllm_build_command` is pure. `run_trtllm_build` runs it as a subprocess into a
temporary sibling of the engine directory (nemo_trt.atomic.atomic_dir), logs to a file,
shows progress, checks the rank engines, hashes them and writes the engine manifest
before the directory is renamed into place: `serve` can never see half an engine set.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nemo_trt.build.builder_rules import check_settings, inputs_from_plan
from nemo_trt.build.engine_manifest import (
    ENGINE_BUILD_FIELDS,
    ENGINE_PLUGIN_FLAGS,
    EngineFile,
    EngineManifest,
    engine_settings,
    rank_engine_files,
    runtime_tensorrt_version,
    runtime_trtllm_version,
    unpredicted,
    write_engine_manifest,
)
from nemo_trt.build.trtllm_target import TrtllmTarget, load_target
from nemo_trt.errors import NemoTrtError
from nemo_trt.hashing import sha256_file

TRTLLM_BUILD_ENV = "NEMO_TRT_TRTLLM_BUILD"  # path of the trtllm-build executable to run (tests: a stand-in)

_PLUGIN_DTYPE = {"bf16": "bfloat16", "fp8": "fp8"}


def _on_off(value: bool) -> str:
    return "enable" if value else "disable"


def trtllm_build_command(plan: Any, checkpoint_dir: str | Path, output_dir: str | Path, *,
                         workers: int | None = None, executable: str = "trtllm-build",
                         target: TrtllmTarget | None = None) -> list[str]:
    """The exact `trtllm-build` argv (executable first) that builds `plan`'s engines.

    `plan` is a nemo_trt.build.planner.Plan: tp, pp, world_size, precision and
    `.build` (BuildSettings) are read. Every flag and value is checked against the
    targeted TensorRT-LLM's flag set; inconsistent settings raise NemoTrtError.
    """
    target = target or load_target()
    b = plan.build
    tp, pp, world = int(plan.tp), int(plan.pp), int(plan.world_size)
    precision = str(plan.precision)
    if tp * pp != world:
        raise NemoTrtError(f"plan world size {world} != tp {tp} x pp {pp}", "re-plan the build")
    if b.max_input_len > b.max_seq_len:
        raise NemoTrtError(f"max_input_len {b.max_input_len} exceeds max_seq_len {b.max_seq_len}",
                           "lower --max-input-len or raise --max-seq-len")
    if b.max_num_tokens < b.max_input_len and not b.use_paged_context_fmha:
        # Without paged context FMHA a prompt cannot be chunked, so one full prompt must fit in an iteration.
        raise NemoTrtError(
            f"max_num_tokens {b.max_num_tokens} < max_input_len {b.max_input_len} needs paged context FMHA "
            "(chunked prefill)",
            "enable use_paged_context_fmha in the profile or raise max_num_tokens")
    if b.use_fp8_context_fmha and (precision != "fp8" or str(getattr(plan, "kv_cache_dtype", "fp8")) != "fp8"):
        raise NemoTrtError("FP8 context FMHA needs an FP8 checkpoint and KV cache",
                           "use --precision fp8 (FP8 KV cache) or disable use_fp8_context_fmha")
    if str(b.gemm_plugin) == "fp8" and precision != "fp8":
        raise NemoTrtError("--gemm_plugin fp8 needs an FP8 checkpoint", "use gemm_plugin auto for BF16")
    # What we emit must be what the engine gets: refuse anything TensorRT-LLM's builder would silently
    # change (reduce_fusion for DeciLM, FP8 context FMHA preconditions, max_num_tokens clipping, ...).
    check_settings(inputs_from_plan(plan), target.version)
    if int(b.max_beam_width) != 1:
        # the Triton config nemo-trt writes serves sampling/greedy only (decoding_mode top_k_top_p)
        raise NemoTrtError(f"max_beam_width {b.max_beam_width} is not supported", "use max_beam_width 1")
    workers = world if workers is None else int(workers)
    if not 1 <= workers <= world:
        raise NemoTrtError(f"--workers {workers} must be between 1 and the world size {world}",
                           f"pass 1..{world}")

    args: list[tuple[str, Any]] = [
        ("checkpoint_dir", str(checkpoint_dir)),
        ("output_dir", str(output_dir)),
        ("max_batch_size", b.max_batch_size),
        ("max_input_len", b.max_input_len),
        ("max_seq_len", b.max_seq_len),
        ("max_num_tokens", b.max_num_tokens),
        ("max_beam_width", b.max_beam_width),
        ("kv_cache_type", str(b.kv_cache_type)),
        ("tokens_per_block", b.tokens_per_block),
        # `auto` = the checkpoint dtype. Spelled out although it is the 0.20 default:
        # older releases defaulted the attention plugin to float16.
        ("gpt_attention_plugin", "auto"),
        ("gemm_plugin", str(b.gemm_plugin)),
        ("remove_input_padding", "enable"),  # packed tokens: required by in-flight batching
        ("context_fmha", "enable"),
        ("use_paged_context_fmha", _on_off(b.use_paged_context_fmha)),  # KV-cache reuse + chunked context
        ("use_fp8_context_fmha", _on_off(b.use_fp8_context_fmha)),  # default "enable" in 0.20: always explicit
        ("reduce_fusion", _on_off(b.reduce_fusion)),
        ("multiple_profiles", _on_off(b.multiple_profiles)),
        # trtllm-build caps workers at torch.cuda.device_count() (commands/build.py main()).
        ("workers", workers),
        ("log_level", "info"),
    ]
    if int(getattr(plan, "nodes", 1) or 1) > 1:
        # The engine records the node size; the runtime picks a rank's GPU as rank % gpus_per_node.
        args.append(("gpus_per_node", int(plan.gpus_per_node)))
    argv = [executable]
    for name, value in args:
        argv += [f"--{name}", str(value)]
    target.validate_argv(argv[1:])
    return argv


def command_text(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


# ---------------------------------------------------------------- toolchain detection


@dataclass(frozen=True)
class Toolchain:
    """What a real build needs from this machine. Tests construct it directly (injectable detection)."""

    trtllm_version: str | None
    tensorrt_version: str | None
    trtllm_build: str | None
    gpus: tuple[Any, ...] = ()  # nemo_trt.build.gpu_detect.DetectedGpu
    notes: tuple[str, ...] = field(default=())

    def missing(self) -> list[str]:
        out = []
        if self.trtllm_version is None:
            out.append("TensorRT-LLM (python package tensorrt_llm)")
        if self.trtllm_build is None:
            out.append("the trtllm-build executable")
        if not self.gpus:
            out.append("NVIDIA GPUs (none detected" + (f": {self.notes[0]}" if self.notes else "") + ")")
        return out


def _detect_gpus() -> tuple[tuple[Any, ...], tuple[str, ...]]:
    from nemo_trt.build import gpu_detect

    try:
        return tuple(gpu_detect.detect_gpus()), ()
    except NemoTrtError as exc:
        return (), (exc.problem,)


def detect_toolchain() -> Toolchain:
    """Look, without importing tensorrt_llm: package metadata, PATH (or $NEMO_TRT_TRTLLM_BUILD), NVML."""
    exe = os.environ.get(TRTLLM_BUILD_ENV) or shutil.which("trtllm-build")
    if exe and not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        raise NemoTrtError(f"${TRTLLM_BUILD_ENV}={exe} is not an executable file",
                           f"unset {TRTLLM_BUILD_ENV} or point it at trtllm-build")
    gpus, notes = _detect_gpus()
    return Toolchain(trtllm_version=runtime_trtllm_version(), tensorrt_version=runtime_tensorrt_version(),
                     trtllm_build=exe, gpus=gpus, notes=notes)


# ---------------------------------------------------------------- running the build


ProgressFn = Callable[[str], None]


def _expected_outputs(out: Path, world_size: int) -> list[str]:
    problems = []
    if not (out / "config.json").is_file():
        problems.append("config.json")
    engines = {p.name for p in rank_engine_files(out)}
    want = {f"rank{r}.engine" for r in range(world_size)}
    problems += sorted(want - engines)
    extra = sorted(engines - want)
    if extra:
        problems.append(f"unexpected {', '.join(extra)}")
    return problems


def run_trtllm_build(plan: Any, checkpoint_dir: Path, engines_dir: Path, *, toolchain: Toolchain,
                     log_path: Path, source_fingerprint: str | None = None,
                     checkpoint_fingerprint: str | None = None, workers: int | None = None,
                     plan_dict: dict | None = None, on_line: ProgressFn | None = None,
                     replace: bool = False) -> EngineManifest:
    """Build all rank engines into `engines_dir` atomically; returns the manifest written there."""
    from nemo_trt.atomic import atomic_dir

    if toolchain.trtllm_build is None:
        raise NemoTrtError("trtllm-build is not installed here", "run inside the NGC Triton TRT-LLM container")
    target = load_target()
    engines_dir = Path(engines_dir).absolute()
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # What a user reruns: the same command with the final output directory.
    recorded = trtllm_build_command(plan, checkpoint_dir, engines_dir, workers=workers,
                                    executable="trtllm-build", target=target)
    with atomic_dir(engines_dir, replace=replace) as tmp:
        argv = trtllm_build_command(plan, checkpoint_dir, tmp, workers=workers,
                                    executable=toolchain.trtllm_build, target=target)
        started = time.monotonic()
        returncode, tail = _run_logged(argv, log_path, on_line)
        seconds = time.monotonic() - started
        if returncode != 0:
            raise NemoTrtError(
                f"trtllm-build failed (exit {returncode}) after {seconds:.0f}s; last lines of {log_path}:\n"
                + "\n".join(tail),
                "read the log; earlier stages are kept, so rerunning `nemo-trt build` resumes at the engine stage",
                exit_code=1,
            )
        missing = _expected_outputs(tmp, int(plan.world_size))
        if missing:
            raise NemoTrtError(f"trtllm-build exited 0 but its output is incomplete: {', '.join(missing)}",
                               f"read {log_path}", exit_code=1)
        engines = [EngineFile(name=p.name, bytes=p.stat().st_size, sha256=sha256_file(p))
                   for p in rank_engine_files(tmp)]
        built_version = _engine_config_version(tmp / "config.json")
        trtllm_version = toolchain.trtllm_version or built_version or "unknown"
        if built_version and toolchain.trtllm_version and built_version != toolchain.trtllm_version:
            raise NemoTrtError(
                f"trtllm-build wrote engines for TensorRT-LLM {built_version}, but the installed package is "
                f"{toolchain.trtllm_version}", "make sure trtllm-build comes from the installed TensorRT-LLM",
                exit_code=1)
        built_config = json.loads((tmp / "config.json").read_text())
        settings = engine_settings(built_config)
        planned = {k: getattr(plan.build, k) for k in (*ENGINE_BUILD_FIELDS, *ENGINE_PLUGIN_FLAGS)
                   if hasattr(plan.build, k)}
        planned.update(context_fmha=True, remove_input_padding=True)  # always emitted as enable
        surprises = unpredicted(planned, settings)
        if surprises and on_line:
            on_line("warning: the engine differs from the plan where no known builder rule says so: "
                    + ", ".join(f"{k} planned {v['planned']}, engine {v['engine']}" for k, v in surprises.items()))
        manifest = EngineManifest(
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            trtllm_version=trtllm_version, tensorrt_version=toolchain.tensorrt_version,
            container_image=target.container_image if trtllm_version == target.version else None,
            profile=_profile_name(plan),
            precision=str(plan.precision), tp=int(plan.tp), pp=int(plan.pp), world_size=int(plan.world_size),
            build_command=recorded, build_seconds=round(seconds, 3),
            source_fingerprint=source_fingerprint, checkpoint_fingerprint=checkpoint_fingerprint,
            plan=plan_dict or {}, engines=engines, config_sha256=sha256_file(tmp / "config.json"),
            engine_settings=settings, builder_overrides=list(getattr(plan, "builder_overrides", []) or []),
            unpredicted_overrides=surprises,
        )
        write_engine_manifest(tmp, manifest)
    return manifest


def _profile_name(plan: Any) -> str | None:
    prof = getattr(plan, "profile", None)
    if prof is None or isinstance(prof, str):
        return prof
    return getattr(prof, "name", None)


def _engine_config_version(path: Path) -> str | None:
    try:
        v = json.loads(path.read_text()).get("version")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return str(v) if v else None


def _run_logged(argv: list[str], log_path: Path, on_line: ProgressFn | None) -> tuple[int, list[str]]:
    """Run argv, teeing stdout+stderr into log_path; returns (exit code, last 20 lines).

    The child gets its own process group so Ctrl-C stops trtllm-build and its
    worker processes, not just the parent.
    """
    tail: deque[str] = deque(maxlen=20)
    with open(log_path, "w") as log:
        log.write(f"$ {command_text(argv)}\n")
        log.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, start_new_session=True)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                line = line.rstrip()
                if line:
                    tail.append(line)
                    if on_line:
                        on_line(line)
            proc.wait()
        except BaseException:
            _stop(proc)
            raise
    return proc.returncode, list(tail)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
