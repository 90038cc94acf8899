"""The GPU acceptance run as a pytest target: `pytest -m gpu tests/test_gpu_acceptance.py` on a machine with
NVIDIA GPUs inside the NGC Triton TensorRT-LLM image (README "Build on GPUs"). Same run as
`nemo-trt selftest --gpu` (nemo_trt/selftest.py); skipped where TensorRT-LLM is not installed, and every
step up to the GPU call is tested on CPU in tests/test_selftest.py."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from nemo_trt import selftest as st


@pytest.mark.gpu
def test_gpu_acceptance(tmp_path_factory, tiny_checkpoint_dir):
    from nemo_trt.build.engine import detect_toolchain
    from nemo_trt.serve.launcher import find_tritonserver

    toolchain = detect_toolchain()
    st.preflight(toolchain, tritonserver=find_tritonserver(), mpirun=shutil.which("mpirun"))
    workdir = os.environ.get("NEMO_TRT_SELFTEST_WORKDIR") or tmp_path_factory.mktemp("selftest")
    gpus = [st.Gpu(g.name, g.memory_mib, g.compute_capability, g.family) for g in toolchain.gpus]
    plan = st.plan_selftest(workdir, gpus, golden=st.golden_path(), checkpoint=tiny_checkpoint_dir)
    report = st.run_selftest(plan, toolchain)
    failed = [{k: entry.get(k) for k in ("layout", "error", "steps")} for entry in report["layouts"]
              if not entry["passed"]]
    assert report["passed"], json.dumps(failed, indent=1, default=str)[:20000]
