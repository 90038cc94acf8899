"""`nemo-trt build`: HF checkpoint -> plan -> TRT-LLM checkpoint -> verify -> engines -> model repository.

WORKDIR layout (each entry appears only once complete; see nemo_trt.atomic):

    WORKDIR/plan.json             the plan this build follows (rewritten each run)
    WORKDIR/checkpoint/           TRT-LLM checkpoint: config.json, rank{R}.safetensors, manifest.json
    WORKDIR/engines/              rank{R}.engine, config.json, engine_manifest.json
    WORKDIR/repository/           Triton model repository pointing at ../engines
    WORKDIR/logs/                 trtllm-build.log
    WORKDIR/build_manifest.json   what each stage produced, from what, how long it took

Stages are cached: a stage whose output exists and was made from the same inputs
(source fingerprint, conversion layout, build command, TensorRT-LLM version) is
skipped, so a failed or interrupted build resumes at the stage that failed, and
`--until convert` on a CPU machine prepares a checkpoint that a later build on the
GPU machine reuses. Refusals (no TensorRT-LLM, no GPU, wrong GPUs, no disk) happen
before any stage runs.
"""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nemo_trt import __version__
from nemo_trt.atomic import atomic_write_text
from nemo_trt.build.engine import (
    Toolchain,
    command_text,
    run_trtllm_build,
    trtllm_build_command,
)
from nemo_trt.build.engine_manifest import ENGINE_MANIFEST_NAME, EngineManifest, read_engine_manifest
from nemo_trt.build.trtllm_target import load_target
from nemo_trt.errors import NemoTrtError

UNTIL_CHOICES: tuple[str, ...] = ("convert", "engine", "repo")
# "calibrate" runs only for FP8 from a BF16 checkpoint (inside the converter, before any rank file).
STAGES: tuple[str, ...] = ("plan", "calibrate", "convert", "verify", "engine", "repo")
BUILD_MANIFEST = "build_manifest.json"
GPU_MEMORY_TOLERANCE = 0.02
DISK_HEADROOM = 1.05  # safetensors headers, engine metadata, timing cache


@dataclass(frozen=True)
class BuildRequest:
    gpu: str  # profile name, profile YAML path, or "auto"
    checkpoint: Path  # HF checkpoint directory (a built-in model name works for --dry-run)
    output: Path  # WORKDIR
    precision: str | None = None
    variant: str = "throughput"
    max_seq_len: int | None = None
    max_batch_size: int | None = None
    until: str = "repo"
    force: bool = False
    workers: int | None = None
    calib_device: str = "cpu"  # where FP8 calibration runs (layer by layer): cpu | cuda
    gpus_per_node: int | None = None  # split the layout over nodes of this size (nemo_trt.build.layout)


@dataclass(frozen=True)
class Workdir:
    root: Path

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint"

    @property
    def engines(self) -> Path:
        return self.root / "engines"

    @property
    def repository(self) -> Path:
        return self.root / "repository"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def build_log(self) -> Path:
        return self.logs / "trtllm-build.log"

    @property
    def manifest(self) -> Path:
        return self.root / BUILD_MANIFEST

    def to_dict(self) -> dict[str, str]:
        return {"root": str(self.root), "plan": str(self.plan), "checkpoint": str(self.checkpoint),
                "engines": str(self.engines), "repository": str(self.repository),
                "build_log": str(self.build_log), "build_manifest": str(self.manifest)}


# ------------------------------------------------------------------ stage implementations
#
# The conversion, verification and repository writer live in their own modules
# (nemo_trt.build.convert, nemo_trt.build.verify, nemo_trt.serve.repo_writer). The
# pipeline reaches them through this small table so the orchestration is tested
# with the real implementations and a different table is never needed in
# production; only the external toolchain (TensorRT-LLM, GPUs) is injected.


@dataclass(frozen=True)
class ConvertResult:
    fingerprint: str | None  # of the converted checkpoint (its files' hashes)
    source_fingerprint: str | None  # of the HF checkpoint (names, sizes, header hashes, config)
    reused: bool
    detail: dict = field(default_factory=dict)


def _digest(obj: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def checkpoint_fingerprints(ckpt_dir: Path) -> tuple[str | None, str | None]:
    """(converted checkpoint, HF source) fingerprints from the converter's manifest.json."""
    from nemo_trt.build.convert import manifest as mf

    m = mf.load_manifest(ckpt_dir) if ckpt_dir.is_dir() else None
    if not m:
        return None, None
    files = {name: f.get("sha256") for name, f in m.get("files", {}).items()}
    return (_digest(files) if files else None), (_digest(m["source"]) if m.get("source") else None)


def _convert(hf_dir: Path, out_dir: Path, *, tp: int, pp: int, precision: str, kv_cache_dtype: str,
             force: bool, calib_device: str = "cpu", on_stage: Reporter | None = None) -> ConvertResult:
    from nemo_trt.build.convert import ConversionResult, convert_checkpoint

    def convert(replace: bool) -> ConversionResult:
        return convert_checkpoint(hf_dir, out_dir, tp=tp, pp=pp, precision=precision, kv_cache_dtype=kv_cache_dtype,
                                  progress=False, force=replace, device=calib_device, on_stage=on_stage)

    try:
        result = convert(replace=False)
    except NemoTrtError as exc:
        # An output made from other inputs (another profile's layout, an edited source): with
        # --force replace it (atomically: the old one stays until the new one is complete).
        if not (force and out_dir.exists() and "already exists" in exc.problem):
            raise
        result = convert(replace=True)
    fingerprint, source = checkpoint_fingerprints(out_dir)
    return ConvertResult(fingerprint=fingerprint, source_fingerprint=source, reused=bool(result.up_to_date),
                         detail={"bytes_written": result.bytes_written, "kv_cache_dtype": result.kv_cache_dtype,
                                 "calibration": result.calibration})


# A logits comparison runs the reference model on both checkpoints; on CPU that is only
# affordable for small models (tests, the tiny model). The 49B gets the tensor-by-tensor check.
VERIFY_LOGITS_MAX_BYTES = 4_000_000_000


def _verify(hf_dir: Path, ckpt_dir: Path, *, logits: bool) -> dict:
    from nemo_trt.build.convert import verify_checkpoint

    report = verify_checkpoint(hf_dir, ckpt_dir, logits=logits)
    data = report.to_dict() if hasattr(report, "to_dict") else dict(report)
    data.setdefault("ok", bool(getattr(report, "ok", False)))
    return data


def _write_repo(output: Path, *, tokenizer_dir: Path, engine_dir: Path, plan: Any) -> None:
    from nemo_trt.serve import repo_writer

    # force: the repository is derived from the engines; a rerun rewrites it (atomically).
    repo_writer.write_repository(output, tokenizer_dir=tokenizer_dir, engine_dir=engine_dir, plan=plan, force=True)


# ------------------------------------------------------------------ planning


@dataclass
class Prepared:
    request: BuildRequest
    workdir: Workdir
    hf_dir: Path
    spec: Any
    profile: Any
    plan: Any
    target: Any = field(default_factory=load_target)

    @property
    def stages(self) -> list[str]:
        last = {"convert": "verify", "engine": "engine", "repo": "repo"}[self.request.until]
        calibrates = self.plan.calibration is not None and self.plan.calibration.needed
        return [s for s in STAGES[: STAGES.index(last) + 1] if s != "calibrate" or calibrates]


def prepare(request: BuildRequest, *, toolchain: Toolchain | None = None) -> Prepared:
    """Resolve the profile and make the plan. Pure apart from reading the HF config (and GPUs for --gpu auto)."""
    from nemo_trt.build.calibration_plan import plan_calibration
    from nemo_trt.build.gpu_detect import match_profile
    from nemo_trt.build.layout import make_node_plan
    from nemo_trt.build.profiles import load_profile
    from nemo_trt.build.spec import ModelSpec
    from nemo_trt.model_facts import resolve_model

    if request.until not in UNTIL_CHOICES:
        raise NemoTrtError(f"unknown --until {request.until!r}", f"use one of {', '.join(UNTIL_CHOICES)}")
    hf_dir = resolve_model(request.checkpoint)
    spec = ModelSpec.from_path(hf_dir)
    if request.gpu.strip().lower() == "auto":
        if toolchain is None or not toolchain.gpus:
            note = f" ({toolchain.notes[0]})" if toolchain and toolchain.notes else ""
            raise NemoTrtError(f"--gpu auto found no NVIDIA GPU here{note}",
                               "pass --gpu PROFILE (see `nemo-trt profiles`)")
        profile = match_profile(list(toolchain.gpus))
    else:
        profile = load_profile(request.gpu)
    plan = make_node_plan(spec, profile, precision=request.precision, variant=request.variant,
                          max_seq_len=request.max_seq_len, max_batch_size=request.max_batch_size,
                          gpus_per_node=request.gpus_per_node)
    plan.calibration = plan_calibration(spec, hf_dir, precision=plan.precision, kv_cache_dtype=plan.kv_cache_dtype,
                                        gpus=[profile.gpu.family], gpu_memory_bytes=profile.gpu.memory_bytes,
                                        device=request.calib_device)
    return Prepared(request=request, workdir=Workdir(Path(request.output).absolute()), hf_dir=hf_dir,
                    spec=spec, profile=profile, plan=plan)


# ------------------------------------------------------------------ dry run


def convert_call(p: Prepared) -> dict:
    return {"call": "nemo_trt.build.convert.convert_checkpoint",
            "args": {"hf_dir": str(p.hf_dir), "output_dir": str(p.workdir.checkpoint), "tp": p.plan.tp,
                     "pp": p.plan.pp, "precision": p.plan.precision},
            "writes": [str(p.workdir.checkpoint / "config.json")]
            + [str(p.workdir.checkpoint / f"rank{r}.safetensors") for r in range(p.plan.world_size)]}


def calibrate_stage(p: Prepared) -> dict:
    """The calibration the convert stage runs first: its call, prompts/tokens and estimates per route."""
    cal = p.plan.calibration
    return {"stage": "calibrate", "call": "nemo_trt.build.convert.calibrate.calibrate",
            "args": {"hf_dir": str(p.hf_dir), "prompts": cal.prompt_source, "device": p.request.calib_device,
                     "method": "layerwise"},
            "prompts": cal.prompts, "tokens": cal.tokens, "tokenization": cal.tokenization,
            "estimates": [r.model_dump() for r in cal.routes],
            "writes": ["$NEMO_TRT_CACHE/calibration/<key>.json (activation and KV ranges, reused by reruns)"]}


def describe(p: Prepared, *, toolchain: Toolchain | None = None) -> dict:
    """What a real build would do: the plan, each stage's exact command/call and outputs."""
    stages: list[dict] = [{"stage": "plan", "writes": [str(p.workdir.plan)]}]
    if "calibrate" in p.stages:
        stages.append(calibrate_stage(p))
    stages.append({"stage": "convert", **convert_call(p)})
    stages.append({"stage": "verify", "call": "nemo_trt.build.verify.verify_checkpoint",
                   "args": {"hf_dir": str(p.hf_dir), "checkpoint_dir": str(p.workdir.checkpoint)}})
    if "engine" in p.stages:
        argv = trtllm_build_command(p.plan, p.workdir.checkpoint, p.workdir.engines, workers=p.request.workers)
        stages.append({"stage": "engine", "command": argv, "command_text": command_text(argv),
                       "log": str(p.workdir.build_log),
                       "writes": [str(p.workdir.engines / f"rank{r}.engine") for r in range(p.plan.world_size)]
                       + [str(p.workdir.engines / "config.json"), str(p.workdir.engines / ENGINE_MANIFEST_NAME)]})
    if "repo" in p.stages:
        stages.append({"stage": "repo", "call": "nemo_trt.serve.repo_writer.write_repository",
                       "args": {"output": str(p.workdir.repository), "tokenizer_dir": str(p.hf_dir),
                                "engine_dir": str(p.workdir.engines)},
                       "tensorrt_llm_parameters": tensorrt_llm_parameters(p.plan),
                       "writes": [str(p.workdir.repository)]})
    out = {
        "dry_run": True,
        "nemo_trt_version": __version__,
        "profile": p.profile.name,
        "gpu": {"name": p.profile.gpu.name, "count": p.profile.gpu.count, "memory_mib": p.profile.gpu.memory_mib,
                "compute_capability": p.profile.gpu.compute_capability},
        "precision": p.plan.precision,
        "variant": p.plan.variant,
        "tp": p.plan.tp,
        "pp": p.plan.pp,
        "world_size": p.plan.world_size,
        "until": p.request.until,
        "target": {"tensorrt_llm": p.target.version, "tensorrt": p.target.tensorrt_version,
                   "container_image": p.target.container_image},
        "workdir": p.workdir.to_dict(),
        "stages": stages,
        "plan": p.plan.model_dump(mode="json"),
    }
    if toolchain is not None:
        out["toolchain"] = toolchain_dict(toolchain)
        try:
            preflight(p, toolchain)
            out["real_build_here"] = "ok"
        except NemoTrtError as exc:
            out["real_build_here"] = f"refused: {exc.problem}"
    return out


def tensorrt_llm_parameters(plan: Any) -> dict[str, str]:
    """The runtime knobs of the plan that the tensorrt_llm model's config.pbtxt receives."""
    b = plan.build
    return {"max_beam_width": str(b.max_beam_width),
            "batch_scheduler_policy": b.batch_scheduler_policy,
            "kv_cache_free_gpu_mem_fraction": str(b.kv_cache_free_gpu_mem_fraction),
            # the planner's KV capacity caps the pool: it must hold a max_seq_len sequence (§12 #8)
            "max_tokens_in_paged_kv_cache": str(getattr(plan, "kv_tokens", 0) or ""),
            "enable_kv_cache_reuse": str(b.enable_kv_cache_reuse).lower(),
            "enable_chunked_context": str(b.enable_chunked_context).lower()}


def toolchain_dict(t: Toolchain) -> dict:
    return {"tensorrt_llm": t.trtllm_version, "tensorrt": t.tensorrt_version, "trtllm_build": t.trtllm_build,
            "gpus": [f"{g.name} ({g.memory_mib} MiB)" for g in t.gpus], "notes": list(t.notes)}


# ------------------------------------------------------------------ refusals (before any work)


def preflight(p: Prepared, toolchain: Toolchain) -> None:
    """Refuse up front what would fail later: missing toolchain, wrong GPUs, not enough disk."""
    needs_gpu = "engine" in p.stages
    if needs_gpu:
        missing = toolchain.missing()
        if missing:
            raise NemoTrtError(
                f"a real build to the {p.request.until!r} stage needs {', '.join(missing)}, "
                "which this machine does not have",
                f"run it in the NGC Triton TensorRT-LLM container {p.target.container_image} "
                f"(TensorRT-LLM {p.target.version}) on the GPU machine (see Dockerfile); here, `--dry-run` shows "
                "every command, and `--until convert` converts and verifies the checkpoint without GPUs so the "
                "GPU build reuses it",
            )
        if toolchain.trtllm_version not in (None, "unknown") and toolchain.trtllm_version != p.target.version:
            if not p.request.force:
                raise NemoTrtError(
                    f"this machine has TensorRT-LLM {toolchain.trtllm_version}; nemo-trt targets "
                    f"{p.target.version} (its trtllm-build flags are checked against that release)",
                    f"build in {p.target.container_image}, or pass --force to build with "
                    f"{toolchain.trtllm_version} anyway",
                )
        check_gpus(p, toolchain)
    check_disk(p)
    check_calibration_memory(p)


def check_calibration_memory(p: Prepared) -> None:
    """FP8 calibration that would not fit in this machine's memory is refused before any stage runs."""
    from nemo_trt.build import calibration_plan as cp

    cal = p.plan.calibration
    if cal is None or not cal.needed or _checkpoint_done(p) or not any(p.hf_dir.glob("*.safetensors")):
        return
    if p.request.calib_device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise NemoTrtError("--calib-device cuda was given but no CUDA device is available here",
                               "use --calib-device cpu (layer by layer, bounded memory)")
    cp.require_fits(cp.chosen(cal), alternatives=cal.routes)


def check_gpus(p: Prepared, toolchain: Toolchain) -> None:
    prof = p.profile.gpu
    gpus = list(toolchain.gpus)
    problems = []
    families = {getattr(g, "family", None) for g in gpus}
    if families != {prof.family}:
        problems.append(f"GPU model differs (profile: {prof.name}; here: {', '.join(sorted({g.name for g in gpus}))})")
    # A multi-node layout is built on one of its nodes (trtllm-build builds rank by rank).
    need = p.plan.gpus_per_node if getattr(p.plan, "nodes", 1) > 1 else prof.count
    if len(gpus) < need:
        problems.append(f"{len(gpus)} GPU(s) here, the profile needs {need}")
    smallest = min((g.memory_mib for g in gpus), default=0)
    if smallest < prof.memory_mib * (1 - GPU_MEMORY_TOLERANCE):
        problems.append(f"{smallest} MiB per GPU here, the profile plans for {prof.memory_mib} MiB")
    if problems and not p.request.force:
        raise NemoTrtError(
            f"the GPUs here do not match profile {p.profile.name}: " + "; ".join(problems),
            "use the profile of this machine (`--gpu auto`, see `nemo-trt profiles --detect`), "
            "or pass --force to build anyway (engines are tuned for the GPU that builds them)",
        )


def check_disk(p: Prepared) -> None:
    """Free space for what this run will write (cached stages need nothing)."""
    need = 0
    total = int(getattr(p.plan, "total_weight_bytes", 0) or 0)
    if not _checkpoint_done(p):
        need += total
    if "engine" in p.stages and not _engines_current(p):
        need += total
    if need == 0:
        return
    probe = p.workdir.root
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need * DISK_HEADROOM and not p.request.force:
        raise NemoTrtError(
            f"{probe} has {free / 1e9:.1f} GB free; this build writes about {need * DISK_HEADROOM / 1e9:.1f} GB "
            "(TRT-LLM checkpoint + engines)",
            "free disk space or choose another --output (pass --force to try anyway)",
        )


# ------------------------------------------------------------------ cache checks


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _build_manifest(p: Prepared) -> dict:
    return _read_json(p.workdir.manifest) or {}


def _checkpoint_done(p: Prepared) -> bool:
    """A converted checkpoint of this plan's layout exists (per the converter's manifest)."""
    from nemo_trt.build.convert import manifest as mf

    m = mf.load_manifest(p.workdir.checkpoint) if p.workdir.checkpoint.is_dir() else None
    conv = (m or {}).get("plan", {})
    return (conv.get("tp") == p.plan.tp and conv.get("pp") == p.plan.pp
            and conv.get("precision") == p.plan.precision and conv.get("kv_cache_dtype") == p.plan.kv_cache_dtype)


def _engines_current(p: Prepared, toolchain: Toolchain | None = None) -> bool:
    if not (p.workdir.engines / ENGINE_MANIFEST_NAME).is_file():
        return False
    try:
        em = read_engine_manifest(p.workdir.engines)
    except NemoTrtError:
        return False
    want = trtllm_build_command(p.plan, p.workdir.checkpoint, p.workdir.engines, workers=p.request.workers)
    if _without_workers(em.build_command) != _without_workers(want):  # --workers does not change the engines
        return False
    ckpt = _checkpoint_fingerprint(p)
    if ckpt is not None and em.checkpoint_fingerprint != ckpt:
        return False
    if toolchain is not None and toolchain.trtllm_version and em.trtllm_version != toolchain.trtllm_version:
        return False
    return True


def _without_workers(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--workers":
            skip = True
        else:
            out.append(a)
    return out


def _checkpoint_fingerprint(p: Prepared) -> str | None:
    return checkpoint_fingerprints(p.workdir.checkpoint)[0]


# ------------------------------------------------------------------ running


@dataclass
class StageResult:
    stage: str
    status: str  # "done" | "cached" | "skipped"
    seconds: float
    detail: dict = field(default_factory=dict)


Reporter = Callable[[str, str], None]  # (stage, message)


def run_build(p: Prepared, *, toolchain: Toolchain, report: Reporter | None = None,
              on_build_line: Callable[[str], None] | None = None) -> dict:
    """Run the stages up to `--until`; returns the summary also written to build_manifest.json."""
    preflight(p, toolchain)
    say = report or (lambda stage, msg: None)
    wd = p.workdir
    wd.root.mkdir(parents=True, exist_ok=True)
    results: list[StageResult] = []
    manifest = _build_manifest(p)
    manifest.update({"nemo_trt_version": __version__, "profile": p.profile.name,
                     "precision": p.plan.precision, "variant": p.plan.variant,
                     "tp": p.plan.tp, "pp": p.plan.pp, "hf_checkpoint": str(p.hf_dir),
                     "target": {"tensorrt_llm": p.target.version, "container_image": p.target.container_image}})
    stages_state: dict = manifest.setdefault("stages", {})

    def record(res: StageResult) -> None:
        results.append(res)
        stages_state[res.stage] = {"status": res.status, "seconds": round(res.seconds, 3),
                                   "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **res.detail}
        manifest["updated_at"] = stages_state[res.stage]["at"]
        atomic_write_text(wd.manifest, json.dumps(manifest, indent=2) + "\n")

    # plan
    t0 = time.monotonic()
    atomic_write_text(wd.plan, json.dumps(p.plan.model_dump(mode="json"), indent=2) + "\n")
    record(StageResult("plan", "done", time.monotonic() - t0, {"path": str(wd.plan)}))
    say("plan", f"{p.profile.name} {p.plan.precision} {p.plan.variant}: tp{p.plan.tp} pp{p.plan.pp}")

    # convert (the converter's manifest makes a rerun with the same inputs a no-op)
    t0 = time.monotonic()
    if "calibrate" not in p.stages:  # otherwise the converter says when calibration, then writing, starts
        say("convert", f"{p.hf_dir} -> {wd.checkpoint} (tp{p.plan.tp} pp{p.plan.pp} {p.plan.precision})")
    conv = _convert(p.hf_dir, wd.checkpoint, tp=p.plan.tp, pp=p.plan.pp, precision=p.plan.precision,
                    kv_cache_dtype=p.plan.kv_cache_dtype, force=p.request.force, calib_device=p.request.calib_device,
                    on_stage=say)
    calib_s = 0.0
    if "calibrate" in p.stages:
        cal = dict(conv.detail.get("calibration") or {})
        stats = cal.get("stats") or {}
        status = "cached" if conv.reused or stats.get("cached") else "done"
        calib_s = float(stats.get("seconds", 0.0)) if status == "done" else 0.0
        record(StageResult("calibrate", status, calib_s, cal))
    record(StageResult("convert", "cached" if conv.reused else "done", time.monotonic() - t0 - calib_s,
                       {"path": str(wd.checkpoint), "fingerprint": conv.fingerprint,
                        "source_fingerprint": conv.source_fingerprint, **conv.detail}))

    # verify (cached by the converted checkpoint's fingerprint)
    t0 = time.monotonic()
    prev = stages_state.get("verify")
    if not isinstance(prev, dict):
        prev = {}
    if prev.get("ok") and conv.fingerprint and prev.get("checkpoint_fingerprint") == conv.fingerprint:
        say("verify", "checkpoint already verified")
        record(StageResult("verify", "cached", time.monotonic() - t0,
                           {k: v for k, v in prev.items() if k not in ("status", "seconds", "at")}))
    else:
        logits = p.plan.total_weight_bytes < VERIFY_LOGITS_MAX_BYTES
        say("verify", "comparing every converted tensor with the HF checkpoint"
            + (" and reference logits" if logits else ""))
        rep = _verify(p.hf_dir, wd.checkpoint, logits=logits)
        detail = {"ok": bool(rep.get("ok")), "checkpoint_fingerprint": conv.fingerprint, "logits": logits,
                  "tensors_checked": rep.get("tensors_checked"), "problems": list(rep.get("problems") or [])[:20]}
        if not detail["ok"]:
            record(StageResult("verify", "failed", time.monotonic() - t0, detail))
            raise NemoTrtError(
                f"the converted checkpoint in {wd.checkpoint} does not match {p.hf_dir}: "
                + "; ".join(detail["problems"][:5] or ["see build_manifest.json"]),
                "rerun with --force to reconvert; if it fails again, report a bug with build_manifest.json",
                exit_code=1)
        record(StageResult("verify", "done", time.monotonic() - t0, detail))
    if "engine" not in p.stages:
        return _summary(p, results, toolchain)

    # engines
    t0 = time.monotonic()
    if _engines_current(p, toolchain):
        say("engine", f"reusing {wd.engines} (same command, checkpoint and TensorRT-LLM)")
        em = read_engine_manifest(wd.engines)
        record(StageResult("engine", "cached", time.monotonic() - t0, _engine_detail(em, wd.engines)))
    else:
        say("engine", f"trtllm-build, {p.plan.world_size} rank(s) (log: {wd.build_log})")
        # The repository describes the engines it serves (limits, KV settings); one written for the
        # engines about to be replaced must not outlive them if the build or the repo stage fails.
        if wd.repository.exists():
            shutil.rmtree(wd.repository)
        em = run_trtllm_build(p.plan, wd.checkpoint, wd.engines, toolchain=toolchain, log_path=wd.build_log,
                              source_fingerprint=conv.source_fingerprint, checkpoint_fingerprint=conv.fingerprint,
                              workers=p.request.workers, plan_dict=p.plan.model_dump(mode="json"),
                              on_line=on_build_line, replace=True)
        record(StageResult("engine", "done", time.monotonic() - t0, _engine_detail(em, wd.engines)))
    if "repo" not in p.stages:
        return _summary(p, results, toolchain)

    # model repository (cheap: always rewritten, atomically, so it matches the engines)
    t0 = time.monotonic()
    say("repo", f"writing {wd.repository}")
    _write_repo(wd.repository, tokenizer_dir=p.hf_dir, engine_dir=wd.engines, plan=p.plan)
    record(StageResult("repo", "done", time.monotonic() - t0, {"path": str(wd.repository)}))
    return _summary(p, results, toolchain)


def _engine_detail(em: EngineManifest, path: Path) -> dict:
    return {"path": str(path), "trtllm_version": em.trtllm_version, "build_seconds": em.build_seconds,
            "engines": [e.name for e in em.engines], "engine_settings": em.engine_settings,
            "unpredicted_overrides": em.unpredicted_overrides}


def _summary(p: Prepared, results: list[StageResult], toolchain: Toolchain) -> dict:
    return {"workdir": p.workdir.to_dict(), "profile": p.profile.name, "precision": p.plan.precision,
            "variant": p.plan.variant, "until": p.request.until,
            "stages": [{"stage": r.stage, "status": r.status, "seconds": round(r.seconds, 3)} for r in results],
            "toolchain": toolchain_dict(toolchain)}
