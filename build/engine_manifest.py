"""What an engine directory was built from and with, and whether this runtime may load it.

`engines/engine_manifest.json` is written by the engine stage (nemo_trt.build.engine)
next to rank{R}.engine + config.json. A TensorRT engine only loads in the exact
TensorRT / TensorRT-LLM version that serialized it ("Version tag does not match",
tensorrtllm_backend #531, #194; triton-trtllm-repository.md §12 #10), so `serve`
calls `check_runtime_compat` before starting tritonserver and refuses with a clear
message instead of a C++ deserialization error deep in the backend log.

Detection is lazy: nothing here imports tensorrt_llm (its import initialises CUDA,
MPI and prints banners); the installed version comes from package metadata.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from nemo_trt.errors import NemoTrtError

ENGINE_MANIFEST_NAME = "engine_manifest.json"
MANIFEST_SCHEMA = 1
_RANK_ENGINE = re.compile(r"^rank(\d+)\.engine$")


class EngineFile(BaseModel):
    name: str
    bytes: int
    sha256: str


class EngineManifest(BaseModel):
    schema_version: int = MANIFEST_SCHEMA
    created_at: str
    trtllm_version: str
    tensorrt_version: str | None = None
    container_image: str | None = None  # the image whose TensorRT-LLM matches trtllm_version
    profile: str | None = None
    precision: str | None = None
    tp: int
    pp: int
    world_size: int
    build_command: list[str] = Field(default_factory=list)  # exact argv, executable first
    build_seconds: float | None = None
    source_fingerprint: str | None = None  # of the HF checkpoint (converter manifest)
    checkpoint_fingerprint: str | None = None  # of the TRT-LLM checkpoint the engines came from
    plan: dict[str, Any] = Field(default_factory=dict)
    engines: list[EngineFile] = Field(default_factory=list)
    config_sha256: str | None = None
    # What the engine really has, read back from the config.json trtllm-build wrote (not what was asked):
    engine_settings: dict[str, Any] = Field(default_factory=dict)
    # builder rules the plan applied (configs/trtllm builder_rules): requested -> effective
    builder_overrides: list[dict[str, Any]] = Field(default_factory=list)
    # settings the engine has other than planned although no known builder rule says so (should stay empty)
    unpredicted_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)


# build_config fields and plugin_config flags nemo-trt sets, as config.json names them
ENGINE_BUILD_FIELDS = ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens", "max_beam_width")
ENGINE_PLUGIN_FLAGS = ("use_paged_context_fmha", "use_fp8_context_fmha", "reduce_fusion", "multiple_profiles",
                       "tokens_per_block", "context_fmha", "remove_input_padding")


def engine_settings(engine_config: dict) -> dict[str, Any]:
    """The settings nemo-trt plans, as the engine's config.json records them (BuildConfig.to_dict)."""
    build = engine_config.get("build_config", {})
    plugin = build.get("plugin_config", {})
    out = {k: build[k] for k in ENGINE_BUILD_FIELDS if k in build}
    out.update({k: plugin[k] for k in ENGINE_PLUGIN_FLAGS if k in plugin})
    return out


def unpredicted(planned: dict[str, Any], engine: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Planned settings the engine does not have: {name: {"planned": .., "engine": ..}}."""
    return {k: {"planned": v, "engine": engine[k]} for k, v in planned.items() if k in engine and engine[k] != v}



def rank_engine_files(engine_dir: Path) -> list[Path]:
    """rank0.engine … rank{N-1}.engine, in rank order."""
    found = []
    for p in Path(engine_dir).iterdir():
        m = _RANK_ENGINE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def read_engine_manifest(engine_dir: str | Path) -> EngineManifest:
    engine_dir = Path(engine_dir)
    path = engine_dir / ENGINE_MANIFEST_NAME
    if not path.is_file():
        raise NemoTrtError(
            f"{engine_dir} has no {ENGINE_MANIFEST_NAME}: it was not built by `nemo-trt build` "
            "or the build did not finish",
            "build engines with `nemo-trt build --gpu PROFILE --checkpoint HF_DIR --output WORKDIR`",
        )
    try:
        return EngineManifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise NemoTrtError(f"{path} is not a valid engine manifest: {exc}",
                           "rebuild the engines with `nemo-trt build`") from exc


def write_engine_manifest(engine_dir: str | Path, manifest: EngineManifest) -> Path:
    from nemo_trt.atomic import atomic_write_text

    path = Path(engine_dir) / ENGINE_MANIFEST_NAME
    atomic_write_text(path, manifest.model_dump_json(indent=2) + "\n")
    return path


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def runtime_trtllm_version() -> str | None:
    """Version of the installed TensorRT-LLM, or None where it is not installed (never imports it)."""
    if importlib.util.find_spec("tensorrt_llm") is None:
        return None
    return _dist_version("tensorrt_llm", "tensorrt-llm") or "unknown"


def runtime_tensorrt_version() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return None
    return _dist_version("tensorrt", "tensorrt-cu12", "tensorrt_cu12", "tensorrt-cu13") or "unknown"


def engine_trtllm_version(engine_dir: str | Path) -> tuple[str | None, str]:
    """(version, where it came from): our manifest first, else TRT-LLM's own engine config.json."""
    engine_dir = Path(engine_dir)
    if (engine_dir / ENGINE_MANIFEST_NAME).is_file():
        return read_engine_manifest(engine_dir).trtllm_version, ENGINE_MANIFEST_NAME
    config = engine_dir / "config.json"
    if config.is_file():
        try:
            version = json.loads(config.read_text()).get("version")
        except (json.JSONDecodeError, AttributeError):
            version = None
        # Engine.save writes the building TensorRT-LLM's __version__ at the top of config.json.
        return (str(version) if version else None), "config.json"
    return None, "nothing"


def _normalize(version: str) -> str:
    # "0.20.0" == "0.20.0" exactly; local labels / post releases are different builds.
    return version.strip()


def check_runtime_compat(engine_dir: str | Path, *, runtime_version: str | None = None,
                         detect: bool = True) -> str:
    """Refuse engines this TensorRT-LLM cannot load. Returns the engine's TensorRT-LLM version.

    `runtime_version` overrides detection (tests, or a caller that already knows it).
    With detect=False and no runtime_version, only the engine side is checked.
    """
    from nemo_trt.build.trtllm_target import load_target

    engine_dir = Path(engine_dir)
    target = load_target()
    built_with, where = engine_trtllm_version(engine_dir)
    if built_with is None:
        raise NemoTrtError(
            f"cannot tell which TensorRT-LLM built the engines in {engine_dir} (no {ENGINE_MANIFEST_NAME}, "
            "no version in config.json)",
            "rebuild them with `nemo-trt build`, which records the version",
        )
    if runtime_version is None and detect:
        runtime_version = runtime_trtllm_version()
    image_hint = _image_for(built_with, target)
    if runtime_version is None:
        if not detect:
            return built_with
        raise NemoTrtError(
            f"engines in {engine_dir} were built with TensorRT-LLM {built_with}, and this machine has no "
            "TensorRT-LLM to serve them",
            f"serve inside {image_hint}, or serve the CPU reference backend (`nemo-trt repo --backend reference`)",
        )
    if _normalize(runtime_version) != _normalize(built_with):
        raise NemoTrtError(
            f"engine built with TensorRT-LLM {built_with} (per {where}), this server has {runtime_version}: "
            "TensorRT engines only load in the version that built them",
            f"rebuild with `nemo-trt build` in this container, or serve with image {image_hint}",
        )
    return built_with


def _image_for(version: str, target) -> str:
    if _normalize(version) == target.version:
        return target.container_image
    return f"the NGC Triton TRT-LLM image that ships TensorRT-LLM {version} (nemo-trt targets {target.container_image})"
