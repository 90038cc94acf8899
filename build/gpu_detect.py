"""Find the local NVIDIA GPUs (NVML, else nvidia-smi) and the GPU profile that matches them.

NVML (package nvidia-ml-py, module `pynvml`) is asked first because it needs no
subprocess; `nvidia-smi --query-gpu=name,memory.total,compute_cap
--format=csv,noheader,nounits` is the fallback (both report memory.total, so the
MiB figures equal the ones in configs/gpus/*.yaml). Both sources can be
injected, so the logic is tested without a GPU.
"""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from nemo_trt.build.profiles import GpuProfile, list_profiles
from nemo_trt.errors import NemoTrtError

SMI_QUERY = ["--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader,nounits"]
MEMORY_TOLERANCE = 0.02  # same SKU reports a few MiB differently across drivers
FAMILIES = ("H200", "H100", "A100")  # longest match first is not needed: names are disjoint

NO_GPU_FIX = "run on a machine with an NVIDIA GPU and driver, or pass --gpu PROFILE (h200x1, h100x2, a100x4, a100x8)"


@dataclass(frozen=True)
class DetectedGpu:
    index: int
    name: str
    memory_mib: int
    compute_capability: str  # "9.0"

    @property
    def family(self) -> str | None:
        upper = self.name.upper()
        for family in FAMILIES:
            if family in upper:
                return family
        return None


class _Unavailable(Exception):
    """This detection source cannot answer (no library, no driver, no binary)."""


def _from_nvml(nvml: ModuleType) -> list[DetectedGpu]:
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded / ...
        raise _Unavailable(f"NVML: {exc}") from exc
    try:
        gpus = []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            name = nvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):  # older pynvml returns bytes
                name = name.decode()
            total = nvml.nvmlDeviceGetMemoryInfo(handle).total
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append(DetectedGpu(i, str(name), int(total) // (1024 * 1024), f"{major}.{minor}"))
        return gpus
    except Exception as exc:
        raise _Unavailable(f"NVML query failed: {exc}") from exc
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def parse_smi_csv(text: str) -> list[DetectedGpu]:
    """Rows of `name, memory.total [MiB], compute_cap` (noheader, nounits)."""
    gpus: list[DetectedGpu] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.rsplit(",", 2)]
        if len(parts) != 3:
            raise _Unavailable(f"unexpected nvidia-smi line {line!r}")
        name, memory, cap = parts
        try:
            memory_mib = int(float(memory))
        except ValueError as exc:
            raise _Unavailable(f"unexpected nvidia-smi memory value {memory!r}") from exc
        gpus.append(DetectedGpu(len(gpus), name, memory_mib, cap))
    return gpus


def _run_smi() -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        raise _Unavailable("nvidia-smi not found on PATH")
    try:
        out = subprocess.run([exe, *SMI_QUERY], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _Unavailable(f"nvidia-smi failed: {exc}") from exc
    if out.returncode != 0:
        raise _Unavailable(f"nvidia-smi exited {out.returncode}: {(out.stderr or out.stdout).strip()[:200]}")
    return out.stdout


def _import_nvml() -> ModuleType | None:
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return None
    return pynvml


def detect_gpus(*, nvml: ModuleType | None | bool = True,
                run_smi: Callable[[], str] | None = None) -> list[DetectedGpu]:
    """The local NVIDIA GPUs. `nvml`: True = import pynvml, a module = use it, None/False = skip NVML.

    Raises NemoTrtError (exit 2) when neither NVML nor nvidia-smi finds a GPU.
    """
    problems = []
    module = _import_nvml() if nvml is True else (nvml or None)
    if module is not None:
        try:
            gpus = _from_nvml(module)
            if gpus:
                return gpus
            problems.append("NVML reports no GPU")
        except _Unavailable as exc:
            problems.append(str(exc))
    else:
        problems.append("NVML (nvidia-ml-py) not installed")
    try:
        gpus = parse_smi_csv((run_smi or _run_smi)())
        if gpus:
            return gpus
        problems.append("nvidia-smi lists no GPU")
    except _Unavailable as exc:
        problems.append(str(exc))
    raise NemoTrtError("no NVIDIA GPU/driver was found (" + "; ".join(problems) + ")", NO_GPU_FIX)


def describe(gpus: list[DetectedGpu]) -> str:
    counts: dict[tuple[str, int, str], int] = {}
    for g in gpus:
        key = (g.name, g.memory_mib, g.compute_capability)
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n}x {name} ({mib} MiB, SM {cap})" for (name, mib, cap), n in counts.items())


def match_profile(gpus: list[DetectedGpu], profiles: list[GpuProfile] | None = None) -> GpuProfile:
    """The profile for these GPUs: same family, enough memory per GPU, the most GPUs that are present.

    An 8x H100 machine matches h100x2 (the plan then uses 2 GPUs); a mixed
    machine or an unknown model raises NemoTrtError listing the profiles.
    """
    if not gpus:
        raise NemoTrtError("no NVIDIA GPU/driver was found", NO_GPU_FIX)
    profiles = profiles if profiles is not None else list_profiles()
    families = {g.family for g in gpus}
    known = ", ".join(f"{p.name} ({p.gpu.count}x {p.gpu.name})" for p in profiles)
    if len(families) != 1 or None in families:
        raise NemoTrtError(
            f"no GPU profile matches the local GPUs: {describe(gpus)}",
            f"pass --gpu PROFILE explicitly; known profiles: {known}",
        )
    family = families.pop()
    smallest = min(g.memory_mib for g in gpus)
    candidates = [
        p for p in profiles
        if p.gpu.family.upper() == family
        and p.gpu.count <= len(gpus)
        and smallest >= p.gpu.memory_mib * (1 - MEMORY_TOLERANCE)
    ]
    if not candidates:
        raise NemoTrtError(
            f"no GPU profile matches the local GPUs: {describe(gpus)} "
            "(profiles need the same GPU family, at least as much memory per GPU and at least as many GPUs)",
            f"pass --gpu PROFILE explicitly; known profiles: {known}",
        )
    return max(candidates, key=lambda p: (p.gpu.count, p.gpu.memory_mib))


def resolve_gpu_profile(name: str, *, detect: Callable[[], list[DetectedGpu]] | None = None) -> GpuProfile:
    """`--gpu` value → profile: a profile name/path, or 'auto' to detect the local GPUs."""
    from nemo_trt.build.profiles import load_profile

    if name.strip().lower() == "auto":
        return match_profile((detect or detect_gpus)())
    return load_profile(name)  # (load_profile also understands 'auto', via detect_gpus)
