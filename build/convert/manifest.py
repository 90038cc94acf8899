"""`manifest.json` of a converted checkpoint: what it was made from, how, and the hash of every file.

`inputs` (source fingerprint, tool version, conversion plan) decides whether a rerun is a
no-op; `files` (sha256 + size of each written file) lets `nemo-trt verify` prove the bytes
on disk are the bytes the converter wrote. The manifest is written last, inside the
temporary directory, so a directory that has one is complete.
"""
from __future__ import annotations

import json
from pathlib import Path

from nemo_trt import __version__
from nemo_trt.errors import NemoTrtError
from nemo_trt.hashing import sha256_file

MANIFEST = "manifest.json"
FORMAT = "nemo-trt/trtllm-checkpoint/1"


def make_inputs(fingerprint: dict, plan: dict) -> dict:
    return {"format": FORMAT, "tool_version": __version__, "source": fingerprint, "plan": plan}



def write_manifest(directory: Path, inputs: dict, files: dict[str, str], extra: dict | None = None) -> None:
    entries = {name: {"sha256": files[name], "size": (directory / name).stat().st_size} for name in sorted(files)}
    body = {**inputs, "files": entries, **(extra or {})}
    (directory / MANIFEST).write_text(json.dumps(body, indent=2) + "\n")


def load_manifest(directory: Path) -> dict | None:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NemoTrtError(f"{path} is not valid JSON", "reconvert with --force") from exc
    return data if isinstance(data, dict) else None


def _same_inputs(a: dict, b: dict) -> bool:
    keys = ("format", "tool_version", "source", "plan")
    return all(a.get(k) == b.get(k) for k in keys)


def is_up_to_date(directory: Path, inputs: dict) -> bool:
    """Same inputs and every listed file present with its recorded size (hashes are verify's job)."""
    data = load_manifest(directory)
    if not data or not _same_inputs(data, inputs):
        return False
    return all((directory / n).is_file() and (directory / n).stat().st_size == f.get("size")
               for n, f in data.get("files", {}).items())


def check_files(directory: Path) -> list[str]:
    """Problems with the files listed in the manifest (missing, resized, different hash, unlisted)."""
    data = load_manifest(directory)
    if data is None:
        return [f"{directory} has no manifest.json (not written by nemo-trt convert, or incomplete)"]
    problems = []
    listed = data.get("files", {})
    for name, meta in listed.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name}: listed in the manifest but missing")
        elif path.stat().st_size != meta.get("size"):
            problems.append(f"{name}: size {path.stat().st_size} != manifest {meta.get('size')}")
        elif sha256_file(path) != meta.get("sha256"):
            problems.append(f"{name}: sha256 differs from the manifest (file changed after conversion)")
    for path in directory.glob("rank*.safetensors"):
        if path.name not in listed:
            problems.append(f"{path.name}: not listed in the manifest")
    return problems
