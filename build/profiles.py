"""GPU profiles (configs/gpus/<name>.yaml): hardware facts plus a build layout per precision × variant.

A profile file is data the planner prints: every hardware fact and every build
choice carries a one-line reason, and the models below refuse a file where a
choice has no reason, so `nemo-trt plan` can always say *why*.

Layout of a file:

    name, summary
    gpu: {name, family, count, memory_mib, compute_capability, fp8, interconnect}
    recommended_precision: bf16 | fp8
    reasons: {<gpu field or recommended_precision>: why}
    defaults: {settings: {...}, reasons: {...}}          # shared by every layout
    layouts: {<precision>: {<variant>: {tp, pp, settings, reasons}}}

A layout's settings override `defaults.settings` key by key (same for reasons).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nemo_trt.errors import NemoTrtError
from nemo_trt.resources import gpus_dir

Precision = Literal["bf16", "fp8"]
Variant = Literal["throughput", "latency"]
VARIANTS: tuple[Variant, ...] = ("throughput", "latency")
GPU_REASON_FIELDS = ("memory_mib", "compute_capability", "fp8", "interconnect")


class LayoutSettings(BaseModel):
    """The build/runtime knobs a profile may set (names = planner.BuildSettings fields)."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int | None = Field(None, gt=0)
    max_input_len: int | None = Field(None, gt=0)
    max_seq_len: int | None = Field(None, gt=0)
    max_num_tokens: int | None = Field(None, gt=0)
    max_beam_width: int | None = Field(None, gt=0)
    kv_cache_type: Literal["paged", "continuous", "disabled"] | None = None
    tokens_per_block: int | None = Field(None, gt=0)
    gemm_plugin: Literal["auto", "bfloat16", "fp8", "disable"] | None = None
    use_paged_context_fmha: bool | None = None
    use_fp8_context_fmha: bool | None = None
    reduce_fusion: bool | None = None
    multiple_profiles: bool | None = None
    kv_cache_free_gpu_mem_fraction: float | None = Field(None, gt=0, le=1)
    enable_kv_cache_reuse: bool | None = None
    enable_chunked_context: bool | None = None
    batch_scheduler_policy: Literal["max_utilization", "guaranteed_no_evict"] | None = None

    def set_fields(self) -> dict:
        return self.model_dump(exclude_none=True)


class Choices(BaseModel):
    model_config = ConfigDict(extra="forbid")

    settings: LayoutSettings = Field(default_factory=LayoutSettings)
    reasons: dict[str, str] = Field(default_factory=dict)


class Layout(Choices):
    tp: int = Field(gt=0)
    pp: int = Field(1, gt=0)

    @model_validator(mode="after")
    def _layout_reasons(self):
        for key in ("tp", "pp"):
            if not self.reasons.get(key):
                raise ValueError(f"layout needs a reason for {key!r}")
        return self


class GpuSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str  # as nvidia-smi / NVML reports it
    family: str  # H200, H100, A100: what detection matches on
    count: int = Field(gt=0)
    memory_mib: int = Field(gt=0)  # memory.total per GPU, as nvidia-smi reports it
    compute_capability: str
    fp8: bool
    interconnect: str

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 1024 * 1024


class ResolvedLayout(BaseModel):
    """One precision × variant of a profile with the defaults merged in."""

    precision: Precision
    variant: Variant
    tp: int
    pp: int
    settings: dict
    reasons: dict[str, str]


class GpuProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    summary: str
    gpu: GpuSpec
    recommended_precision: Precision
    reasons: dict[str, str]
    defaults: Choices = Field(default_factory=Choices)
    layouts: dict[Precision, dict[Variant, Layout]]
    source: str | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _consistent(self):
        for key in GPU_REASON_FIELDS + ("recommended_precision",):
            if not self.reasons.get(key):
                raise ValueError(f"profile needs a reason for {key!r}")
        if self.recommended_precision not in self.layouts:
            raise ValueError(f"recommended_precision {self.recommended_precision!r} has no layout")
        if "fp8" in self.layouts and not self.gpu.fp8:
            raise ValueError("fp8 layouts on a GPU without FP8 support (TensorRT-LLM has no FP8 on Ampere)")
        for precision, variants in self.layouts.items():
            missing = set(VARIANTS) - set(variants)
            if missing:
                raise ValueError(f"layouts.{precision} lacks variant(s) {sorted(missing)}")
            for variant, layout in variants.items():
                if layout.tp * layout.pp > self.gpu.count:
                    raise ValueError(f"layouts.{precision}.{variant}: tp*pp={layout.tp * layout.pp} "
                                     f"exceeds the {self.gpu.count} GPU(s)")
                merged = {**self.defaults.settings.set_fields(), **layout.settings.set_fields()}
                reasons = {**self.defaults.reasons, **layout.reasons}
                unexplained = sorted(k for k in merged if not reasons.get(k))
                if unexplained:
                    raise ValueError(f"layouts.{precision}.{variant}: no reason given for {unexplained}")
                unset = sorted(set(LayoutSettings.model_fields) - set(merged))
                if unset:
                    raise ValueError(f"layouts.{precision}.{variant}: settings {unset} are not set")
        return self

    @property
    def precisions(self) -> list[str]:
        return list(self.layouts)

    @property
    def num_gpus(self) -> int:
        return self.gpu.count

    def layout(self, precision: str, variant: str = "throughput") -> ResolvedLayout:
        if precision not in self.layouts:
            raise NemoTrtError(
                f"profile {self.name} has no {precision} layout "
                f"({self.gpu.name}, compute capability {self.gpu.compute_capability})",
                f"use --precision {' or '.join(self.layouts)}",
            )
        if variant not in VARIANTS:
            raise NemoTrtError(f"unknown variant {variant!r}", f"use one of {', '.join(VARIANTS)}")
        layout = self.layouts[precision][variant]
        return ResolvedLayout(
            precision=precision, variant=variant, tp=layout.tp, pp=layout.pp,
            settings={**self.defaults.settings.set_fields(), **layout.settings.set_fields()},
            reasons={**self.defaults.reasons, **layout.reasons},
        )


def parse_profile(data: dict, source: str = "<profile>") -> GpuProfile:
    try:
        return GpuProfile.model_validate({**data, "source": source})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise NemoTrtError(f"{source}: invalid GPU profile at {where}: {first['msg']}",
                           "fix the profile YAML (see configs/gpus/h100x2.yaml for the layout)") from exc


def load_profile_file(path: str | Path) -> GpuProfile:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise NemoTrtError(f"cannot read GPU profile {path}: {exc}", "pass a readable profile YAML") from exc
    if not isinstance(data, dict):
        raise NemoTrtError(f"{path}: a GPU profile must be a YAML mapping", "see configs/gpus/h100x2.yaml")
    return parse_profile(data, str(path))


def profile_names() -> list[str]:
    return sorted(p.stem for p in gpus_dir().glob("*.yaml"))


@lru_cache(maxsize=32)
def _load_builtin(name: str) -> GpuProfile:
    return load_profile_file(gpus_dir() / f"{name}.yaml")


def load_profile(name: str) -> GpuProfile:
    """A built-in profile by name (h200x1, h100x2, a100x4, a100x8), 'auto' (detect the local GPUs)
    or the path of a profile YAML."""
    if name.strip().lower() == "auto":
        from nemo_trt.build import gpu_detect  # lazy: gpu_detect imports this module

        return gpu_detect.match_profile(gpu_detect.detect_gpus())
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        return load_profile_file(name)
    key = name.strip().lower()
    if key not in profile_names():
        raise NemoTrtError(
            f"unknown GPU profile {name!r}",
            f"use one of {', '.join(profile_names())}, 'auto' to detect the local GPUs, "
            "or the path of a profile YAML",
        )
    return _load_builtin(key)


def list_profiles() -> list[GpuProfile]:
    return [_load_builtin(name) for name in profile_names()]
