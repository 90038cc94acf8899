"""A model repository's identity: what it serves, independent of where its files lie.

The regression gate (`nemo-trt regress`) asks the server who it is through Triton
(model configs), never through a local path, so the repository writer puts this block
into the ensemble's config as the JSON string parameter `nemo_trt_repository` (and into
`nemo_trt_repository.json` on disk). Two repositories written from the same engines or
checkpoint, tokenizer and limits get the same `engine_id` wherever they are written or
moved; a changed weight, engine, tokenizer or limit gives another.

Nothing here hashes a path, a timestamp or a model config that contains the block
(no circularity): only file contents, versions and settings.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from nemo_trt import __version__
from nemo_trt.hashing import sha256_file

IDENTITY_PARAMETER = "nemo_trt_repository"
IDENTITY_FORMAT = "nemo-trt-repository-identity/1"
ENGINE_ID_CHARS = 16
# The tokenizer files a repository serves (copied into preprocessing/tokenizer by the writer).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# trtllm-build flags whose values are paths of this build, not properties of the engine.
PATH_FLAGS = ("--checkpoint_dir", "--output_dir", "--model_config", "--build_config", "--lora_dir")


def digest(data: Any) -> str:
    """sha256 of canonical JSON (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()



def tokenizer_file_hashes(directory: Path) -> dict[str, str]:
    """{file name: sha256} of the tokenizer files in `directory` (what `tokenizer_sha256` digests)."""
    return {name: sha256_file(directory / name) for name in TOKENIZER_FILES if (directory / name).is_file()}


def build_argv_digest(argv: list[str]) -> str | None:
    """The trtllm-build command without its executable's location and without path-valued flags."""
    if not argv:
        return None
    kept: list[str] = [Path(argv[0]).name]
    skip = False
    for arg in argv[1:]:
        if skip:
            skip = False
            continue
        flag = arg.split("=", 1)[0]
        if flag in PATH_FLAGS:
            skip = "=" not in arg
            continue
        kept.append(arg)
    return digest(kept)


def trtllm_engine_identity(engine_dir: Path, engine_config: dict, engine_manifest: dict | None) -> dict:
    """Engines by content: the engine manifest's sha256 of every rank engine (written by
    `nemo-trt build`), the TensorRT-LLM that built them and the build command minus paths.
    Without a manifest the engines are not re-hashed (tens of GB): their names and sizes plus
    the engine config stand in, marked `engines_hashed: false`."""
    config_sha = sha256_file(engine_dir / "config.json")
    if engine_manifest is not None:
        return {
            "kind": "tensorrtllm-engines",
            "engines_hashed": True,
            "engines": [{"name": e.get("name"), "sha256": e.get("sha256")}
                        for e in engine_manifest.get("engines", [])],
            "trtllm_version": engine_manifest.get("trtllm_version"),
            "tensorrt_version": engine_manifest.get("tensorrt_version"),
            "build_argv_sha256": build_argv_digest(list(engine_manifest.get("build_command") or [])),
            "precision": engine_manifest.get("precision"),
            "config_sha256": config_sha,
        }
    from nemo_trt.build.engine_manifest import rank_engine_files

    return {
        "kind": "tensorrtllm-engines",
        "engines_hashed": False,
        "engines": [{"name": p.name, "bytes": p.stat().st_size} for p in rank_engine_files(engine_dir)],
        "trtllm_version": engine_config.get("version"),
        "config_sha256": config_sha,
    }


def reference_checkpoint_identity(checkpoint_dir: Path) -> dict:
    """A converted checkpoint by content: the sha256 of every file its manifest.json lists
    (config.json + rank*.safetensors), recomputed from the bytes on disk so a file changed
    after conversion changes the identity (`matches_manifest` says whether it did).
    A checkpoint without a manifest (an HF directory) is hashed the same way: config.json
    and every *.safetensors file. The CPU reference backend reads all of them anyway."""
    from nemo_trt.build.convert.manifest import load_manifest

    manifest = load_manifest(checkpoint_dir)
    listed = dict((manifest or {}).get("files") or {})
    names = sorted(set(listed) | {"config.json"} | {p.name for p in checkpoint_dir.glob("*.safetensors")})
    files = {name: sha256_file(checkpoint_dir / name) for name in names if (checkpoint_dir / name).is_file()}
    matches = None
    if manifest is not None:
        matches = all(files.get(n) == meta.get("sha256") for n, meta in listed.items())
    return {
        "kind": "converted-checkpoint" if manifest is not None else "checkpoint",
        "files_sha256": digest(files),
        "num_files": len(files),
        "matches_manifest": matches,
    }


def make_identity(*, backend: str, engine: dict, tokenizer_files: dict[str, str], max_input_len: int,
                  max_seq_len: int, default_reasoning: str, serving_model: str) -> dict:
    """The identity block; `engine_id` digests everything that decides what the server answers.

    The nemo-trt version is recorded but left out of `engine_id`: upgrading the tool does
    not change the engine (the regression gate still sees the block changed)."""
    served = {
        "backend": backend,
        "engine": engine,
        "tokenizer_sha256": digest(tokenizer_files),
        "limits": {"max_input_len": int(max_input_len), "max_seq_len": int(max_seq_len)},
        "default_reasoning": default_reasoning,
        "serving_model": serving_model,
    }
    return {
        "format": IDENTITY_FORMAT,
        "nemo_trt_version": __version__,
        **served,
        # The CPU reference seeds a per-request generator; TensorRT-LLM promises no such thing across builds.
        "deterministic_sampling": backend == "reference",
        "engine_id": digest(served)[:ENGINE_ID_CHARS],
    }


def identity_parameter_value(identity: dict) -> str:
    """Compact JSON escaped for a pbtxt `string_value: "..."` (protobuf's own C escaping)."""
    from google.protobuf import text_encoding

    return text_encoding.CEscape(json.dumps(identity, sort_keys=True, separators=(",", ":")), as_utf8=False)


def identity_from_model_config(config: Any) -> dict | None:
    """The block back from a parsed ModelConfig (protobuf), or None if it has none."""
    if IDENTITY_PARAMETER not in config.parameters:
        return None
    return json.loads(config.parameters[IDENTITY_PARAMETER].string_value)
