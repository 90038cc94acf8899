"""What a built WORKDIR says about its deployment: plan, engines, model repository.

`nemo-trt deploy k8s` renders from these facts only (nemo_trt.build.pipeline describes the
layout): the plan gives the profile, TP x PP, nodes and memory per rank; the engine manifest
proves the engines exist and were built for that plan; the repository's `tensorrt_llm`
config gives the absolute engine path Triton will open (it is mounted at that path).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from nemo_trt.build.engine_manifest import EngineManifest, rank_engine_files, read_engine_manifest
from nemo_trt.build.pipeline import Workdir
from nemo_trt.build.planner import Plan
from nemo_trt.errors import NemoTrtError

BUILD_HINT = ("build it with `nemo-trt build --gpu PROFILE --checkpoint HF_DIR --output WORKDIR` in the NGC Triton "
              "TensorRT-LLM container (all stages, through `repo`)")


@dataclass(frozen=True)
class BuiltWorkdir:
    root: Path
    plan: Plan
    engines: EngineManifest
    engine_path: str  # gpt_model_path in repository/tensorrt_llm/config.pbtxt (absolute)
    engine_config: dict

    @property
    def repository(self) -> Path:
        return self.root / "repository"

    @property
    def nodes(self) -> int:
        return max(1, int(self.plan.nodes))

    @property
    def gpus_per_pod(self) -> int:
        return self.plan.world_size // self.nodes

    @property
    def engine_digest(self) -> str:
        """Changes whenever the engines or their config change (a pod-template annotation: new engines roll out)."""
        import hashlib

        parts = [self.engines.config_sha256 or ""] + [e.sha256 for e in self.engines.engines]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def read_workdir(path: str | Path) -> BuiltWorkdir:
    """Every check before anything is rendered; NemoTrtError (exit 2) names what is missing and how to get it."""
    wd = Workdir(Path(path).absolute())
    if not wd.root.is_dir():
        raise NemoTrtError(f"WORKDIR {wd.root} does not exist", BUILD_HINT)
    if not wd.plan.is_file():
        raise NemoTrtError(f"{wd.root} has no plan.json: it is not a `nemo-trt build` WORKDIR", BUILD_HINT)
    try:
        plan = Plan.model_validate(json.loads(wd.plan.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise NemoTrtError(f"{wd.plan} is not a valid plan: {str(exc).splitlines()[0]}",
                           "rerun `nemo-trt build` to rewrite it") from exc
    if not (wd.engines / "engine_manifest.json").is_file():
        raise NemoTrtError(
            f"{wd.root} has no engines ({wd.engines}/engine_manifest.json is missing): a Kubernetes deployment "
            "serves TensorRT-LLM engines, and `--until convert` stops before building them",
            "build the engines on a GPU machine: " + BUILD_HINT,
        )
    manifest = read_engine_manifest(wd.engines)
    ranks = rank_engine_files(wd.engines)
    if len(ranks) != plan.world_size or (manifest.tp, manifest.pp) != (plan.tp, plan.pp):
        raise NemoTrtError(
            f"{wd.engines} holds {len(ranks)} rank engine(s) built for TP{manifest.tp} x PP{manifest.pp}, but "
            f"plan.json says TP{plan.tp} x PP{plan.pp} ({plan.world_size} ranks)",
            "rerun `nemo-trt build` with the same options so the engines match the plan",
        )
    engine_config = _read_engine_config(wd.engines)
    built_gpn = engine_config.get("pretrained_config", {}).get("mapping", {}).get("gpus_per_node")
    if plan.nodes > 1 and built_gpn is not None and int(built_gpn) != plan.gpus_per_node:
        raise NemoTrtError(
            f"the engines were built for nodes of {built_gpn} GPUs (mapping.gpus_per_node), the plan spans "
            f"{plan.nodes} nodes of {plan.gpus_per_node}: ranks would pick the wrong GPU",
            f"rebuild with `nemo-trt build --gpus-per-node {plan.gpus_per_node}`",
        )
    return BuiltWorkdir(root=wd.root, plan=plan, engines=manifest, engine_path=_engine_path(wd.repository),
                        engine_config=engine_config)


def _read_engine_config(engines: Path) -> dict:
    try:
        return json.loads((engines / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise NemoTrtError(f"{engines}/config.json is missing or unreadable: {exc}",
                           "rerun `nemo-trt build` to rebuild the engines") from exc


def _engine_path(repository: Path) -> str:
    from nemo_trt.serve.launcher import read_repository

    if not repository.is_dir():
        raise NemoTrtError(f"{repository} does not exist: the build stopped before the `repo` stage",
                           "rerun `nemo-trt build` (it reuses the engines and writes the repository)")
    models = read_repository(repository)
    trtllm = [m for m in models if m.backend == "tensorrtllm"]
    if not trtllm:
        raise NemoTrtError(
            f"{repository} serves no TensorRT-LLM engines (a CPU reference repository?)",
            "deploy the repository `nemo-trt build` wrote next to the engines in WORKDIR/repository",
        )
    path = trtllm[0].parameters.get("gpt_model_path", "")
    if not path.startswith("/"):
        raise NemoTrtError(f"{repository}/tensorrt_llm/config.pbtxt has no absolute gpt_model_path ({path!r})",
                           "rewrite the repository with `nemo-trt build`")
    return path
