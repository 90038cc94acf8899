"""The TensorRT-LLM release nemo-trt targets: version, NGC container, `trtllm-build` flag surface.

Data lives in configs/trtllm/<version>.yaml (sources cited there); this module only
types it. Engines are locked to the TensorRT-LLM/TensorRT version that built them
(triton-trtllm-repository.md §12 #10), so every message that says "use this image"
reads the tag from here, never from a string literal elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

from nemo_trt.errors import NemoTrtError
from nemo_trt.resources import configs_dir

TARGET_VERSION = "0.20.0"

FLAG_KINDS = {"int", "str", "path", "choice", "store_true"}


@dataclass(frozen=True)
class FlagSpec:
    name: str
    kind: str
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    deprecated: str | None = None
    nargs: str | None = None

    def check_value(self, value: str | None) -> str | None:
        """None if `value` is acceptable for this flag, else why not."""
        if self.kind == "store_true":
            return None if value is None else f"--{self.name} takes no value"
        if value is None:
            return f"--{self.name} needs a value"
        if self.kind == "int":
            try:
                int(value)
            except ValueError:
                return f"--{self.name} expects an integer, got {value!r}"
            return None
        if self.kind == "choice":
            # KVCacheType is parsed case-insensitively upstream; the others are exact.
            if value not in self.choices:
                return f"--{self.name} expects one of {list(self.choices)}, got {value!r}"
        return None


@dataclass(frozen=True)
class TrtllmTarget:
    version: str
    container_image: str
    tensorrt_version: str
    cuda_version: str
    python_version: str
    min_driver: str
    sources: dict[str, str]
    executable: str
    flags: dict[str, FlagSpec] = field(repr=False)
    conflicts: tuple[tuple[str, ...], ...] = ()

    def flag(self, name: str) -> FlagSpec:
        try:
            return self.flags[name]
        except KeyError:
            raise NemoTrtError(
                f"`{self.executable} --{name}` does not exist in TensorRT-LLM {self.version}",
                "fix the flag name (see configs/trtllm/) or target another TensorRT-LLM version",
            ) from None

    def validate_argv(self, argv: list[str]) -> None:
        """Parse `argv` (without the executable) the way argparse would, against the kept flag set.

        Raises NemoTrtError on an unknown flag, a missing/invalid value, a repeated flag
        or a combination trtllm-build rejects.
        """
        seen: dict[str, str | None] = {}
        i = 0
        while i < len(argv):
            token = argv[i]
            if not token.startswith("--"):
                raise NemoTrtError(f"unexpected positional argument {token!r} for {self.executable}",
                                   "every trtllm-build argument is a --flag")
            name = token[2:]
            spec = self.flag(name)
            value = None
            if spec.kind != "store_true":
                if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                    raise NemoTrtError(f"--{name} needs a value", "pass a value after the flag")
                value = argv[i + 1]
                i += 1
            problem = spec.check_value(value)
            if problem:
                raise NemoTrtError(problem, "fix the value (see configs/trtllm/)")
            if name in seen:
                raise NemoTrtError(f"--{name} given twice", "pass each trtllm-build flag once")
            seen[name] = value
            i += 1
        for combo in self.conflicts:
            hits = []
            for item in combo:
                flag, _, want = item.partition("=")
                if flag in seen and (not want or seen[flag] == want):
                    hits.append(item)
            if len(hits) == len(combo):
                raise NemoTrtError(f"trtllm-build rejects {' together with '.join(combo)}",
                                   "drop one of them")


def _parse(data: dict, path: Path) -> TrtllmTarget:
    try:
        tb = data["trtllm_build"]
        flags = {}
        for name, raw in tb["flags"].items():
            raw = raw or {}
            kind = raw.get("kind")
            if kind not in FLAG_KINDS:
                raise ValueError(f"flag {name}: kind {kind!r} not in {sorted(FLAG_KINDS)}")
            flags[name] = FlagSpec(
                name=name, kind=kind, choices=tuple(str(c) for c in raw.get("choices", ())),
                aliases=tuple(raw.get("aliases", ())), deprecated=raw.get("deprecated"),
                nargs=raw.get("nargs"),
            )
        return TrtllmTarget(
            version=str(data["version"]), container_image=str(data["container_image"]),
            tensorrt_version=str(data["tensorrt_version"]), cuda_version=str(data["cuda_version"]),
            python_version=str(data["python_version"]), min_driver=str(data["min_driver"]),
            sources=dict(data.get("sources", {})), executable=str(tb.get("executable", "trtllm-build")),
            flags=flags, conflicts=tuple(tuple(c) for c in tb.get("conflicts", ())),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise NemoTrtError(f"{path} is not a valid TensorRT-LLM target file: {exc}",
                           "restore it from the nemo-trt sources") from exc


def target_path(version: str = TARGET_VERSION) -> Path:
    path = configs_dir() / "trtllm" / f"{version}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (configs_dir() / "trtllm").glob("*.yaml"))
        raise NemoTrtError(f"no TensorRT-LLM target file for version {version}",
                           f"use one of {known}")
    return path


@cache
def load_target_data(version: str = TARGET_VERSION) -> dict:
    """The raw target file: other modules type their own sections (backend contract, builder rules)."""
    path = target_path(version)
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise NemoTrtError(f"{path} is not a valid TensorRT-LLM target file", "restore it from the nemo-trt sources")
    return data


@cache
def load_target(version: str = TARGET_VERSION) -> TrtllmTarget:
    return _parse(load_target_data(version), target_path(version))
