"""Reading a Python-backend model's config parameters (used by the model.py files)."""
from __future__ import annotations

import json
from pathlib import Path


def model_parameters(args: dict) -> dict[str, str]:
    """`parameters` of the model config as plain strings."""
    config = json.loads(args["model_config"])
    return {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}


def model_dir(args: dict) -> Path:
    """The model's own directory (`<repository>/<model>`), whatever the repository's location."""
    return Path(args["model_repository"])


def resolve_path(value: str, args: dict) -> Path:
    """Relative paths in parameters are relative to the model directory, so a repository
    can be moved or mounted elsewhere (the writer stores relative paths)."""
    path = Path(value)
    return path if path.is_absolute() else (model_dir(args) / path).resolve()


def required(params: dict[str, str], key: str) -> str:
    value = params.get(key, "")
    if not value or value.startswith("${"):
        raise ValueError(f"model parameter {key!r} is missing or unfilled ({value!r}): rewrite the repository "
                         "with `nemo-trt repo`")
    return value
