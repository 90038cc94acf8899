"""Where the packaged data lives: configs/ and model_repository/ (wheel or checkout)."""
from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    installed = _PKG / "_data" / name
    if installed.is_dir():
        return installed
    checkout = _PKG.parent / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"nemo-trt data directory {name!r} not found (looked in {installed} and {checkout})")


def configs_dir() -> Path:
    return _data_dir("configs")


def model_repository_dir() -> Path:
    return _data_dir("model_repository")


def models_dir() -> Path:
    return configs_dir() / "models"


def gpus_dir() -> Path:
    return configs_dir() / "gpus"


def selftest_golden() -> Path | None:
    """The tiny model's CPU-reference golden (tests/golden/regress_tiny.json; mapped into wheels)."""
    for candidate in (_PKG / "_data" / "golden" / "regress_tiny.json",
                      _PKG.parent / "tests" / "golden" / "regress_tiny.json"):
        if candidate.is_file():
            return candidate
    return None
