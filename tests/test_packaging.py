"""The wheel: build/ serve/ configs/ model_repository/ mapped under nemo_trt/, nothing at the top level.

`python -m build` runs with a temporary cwd: in the repository root ./build
(our sources) would shadow pypa's `build` package. --no-isolation uses the
hatchling from the dev extra, so no network is needed.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _is_scratch(path: str) -> bool:
    """What setuptools/pypa-build style backends leave behind: dist/, *.egg-info, build/lib*, wheels."""
    parts = path.rstrip("/").split("/")
    build_scratch = (parts[0] == "build" and len(parts) > 1
                     and (parts[1] == "lib" or parts[1].startswith(("lib.", "bdist.", "temp."))))
    return parts[0] == "dist" or any(p.endswith(".egg-info") for p in parts) or path.endswith(".whl") or build_scratch


def _untracked() -> set[str] | None:
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None  # not a git checkout (e.g. an sdist)
    return {line[3:] for line in out.stdout.splitlines() if line.startswith("??")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("build")
    pytest.importorskip("hatchling")
    work = tmp_path_factory.mktemp("wheel")
    before = _untracked()
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(work / "dist"), str(REPO)],
        cwd=work, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    after = _untracked()
    if before is not None and after is not None:
        # other files may appear concurrently in a shared checkout; build scratch must not
        new = sorted(p for p in after - before if _is_scratch(p))
        assert not new, f"the wheel build left scratch files in the checkout: {new}"
    wheels = list((work / "dist").glob("nemo_trt-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_wheel_layout(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    must = [
        "nemo_trt/__init__.py", "nemo_trt/cli.py",
        "nemo_trt/build/__init__.py", "nemo_trt/build/spec.py", "nemo_trt/build/accounting.py",
        "nemo_trt/build/planner.py", "nemo_trt/build/profiles.py",
        "nemo_trt/serve/__init__.py",
        "nemo_trt/commands/plan.py",
        "nemo_trt/_data/configs/gpus/h100x2.yaml", "nemo_trt/_data/configs/gpus/a100x8.yaml",
        "nemo_trt/_data/configs/models/llama-3.3-nemotron-super-49b-v1/config.json",
        "nemo_trt/_data/configs/models/llama-3.3-nemotron-super-49b-v1/serving.yaml",
        "nemo_trt/_data/configs/trtllm/0.20.0.yaml",
        "nemo_trt/_data/golden/regress_tiny.json",  # `nemo-trt selftest --gpu` in the NGC image
        "nemo_trt/selftest.py", "nemo_trt/commands/selftest.py", "nemo_trt/serve/backend_contract.py",
        "nemo_trt/build/builder_rules.py",
    ]
    missing = [m for m in must if m not in names]
    assert not missing, missing
    assert any(n.startswith("nemo_trt/_data/model_repository/") and n.endswith("config.pbtxt") for n in names)
    top = {n.split("/", 1)[0] for n in names}
    assert "build" not in top and "serve" not in top and "configs" not in top and "model_repository" not in top
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    meta = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "nemo-trt = nemo_trt.cli:main" in zipfile.ZipFile(wheel).read(meta).decode()


def test_installed_wheel_plans_from_packaged_data(wheel, tmp_path):
    """Install the wheel into a target dir and plan from the packaged configs, not the checkout."""
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                           "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    code = (
        "import nemo_trt, nemo_trt.build.planner as pl, nemo_trt.build.profiles as pr, nemo_trt.resources as rs;"
        "from nemo_trt.build.spec import ModelSpec; from nemo_trt.model_facts import resolve_model;"
        "spec = ModelSpec.from_path(resolve_model(None));"
        "plan = pl.make_plan(spec, pr.load_profile('h100x2'), precision='bf16');"
        "print(nemo_trt.__file__); print(pl.__file__); print(rs.gpus_dir()); print(plan.kv_tokens)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    pkg, planner, gpus, kv_tokens = out.stdout.split()
    for path in (pkg, planner, gpus):
        assert path.startswith(str(target)), path
    assert gpus.endswith("nemo_trt/_data/configs/gpus") and kv_tokens == "267328"
