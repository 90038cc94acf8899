"""Shared pytest fixtures.

Expensive artefacts are session-scoped and built once per test run, in the order
data flows: tiny HF checkpoint (trained, cached) -> converted TRT-LLM checkpoint
-> model repository (CPU reference backend) -> running tritonserver.
Add fixtures here additively; keep each one's cost paid once per session.
"""
from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    # GPU tests need TensorRT-LLM and NVIDIA GPUs; elsewhere they are skipped with the reason.
    try:
        import importlib.util

        have_trtllm = importlib.util.find_spec("tensorrt_llm") is not None
    except Exception:  # pragma: no cover
        have_trtllm = False
    if have_trtllm:
        return
    skip_gpu = pytest.mark.skip(reason="gpu: needs TensorRT-LLM and NVIDIA GPUs (NGC Triton TRT-LLM container)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


# --------------------------------------------------------------------------- tiny model → running server
# Session-scoped: trained once (cached across runs), converted once, one tritonserver per session.


@pytest.fixture(scope="session")
def tiny_checkpoint_dir():
    """The trained tiny DeciLM HF checkpoint (nemo_trt.build.tiny; cached under NEMO_TRT_CACHE)."""
    from nemo_trt.build.tiny import tiny_checkpoint

    return tiny_checkpoint(seed=0)


@pytest.fixture(scope="session")
def tiny_converted_dir(tiny_checkpoint_dir, tmp_path_factory):
    """The tiny checkpoint converted to a TensorRT-LLM checkpoint (TP 1, BF16)."""
    from nemo_trt.build.convert import convert_checkpoint

    output = tmp_path_factory.mktemp("tiny-converted") / "tp1"
    convert_checkpoint(tiny_checkpoint_dir, output, tp=1, progress=False)
    return output


@pytest.fixture(scope="session")
def reference_repository(tiny_checkpoint_dir, tiny_converted_dir, tmp_path_factory):
    """A model repository whose tensorrt_llm model is the CPU reference backend on the tiny model."""
    from nemo_trt.serve.repo_writer import write_repository

    return write_repository(tmp_path_factory.mktemp("tiny-repo") / "repository",
                            tokenizer_dir=tiny_checkpoint_dir, reference_dir=tiny_converted_dir)


@pytest.fixture(scope="session")
def reference_server(reference_repository):
    """tritonserver (nvidia-pytriton copy) serving `reference_repository` on free loopback ports."""
    from nemo_trt.serve.launcher import TritonServer

    with TritonServer(reference_repository, http_port=0, grpc_port=0, metrics_port=0,
                      startup_timeout=300) as server:
        yield server


# ---- converter (build/convert) -------------------------------------------------------
@pytest.fixture(scope="session")
def convert_source(tmp_path_factory):
    """A small random DeciLM with every block kind (see tests/fixtures/convert_models.py)."""
    from fixtures.convert_models import write_random

    return write_random(tmp_path_factory.mktemp("convert") / "deci-src")


@pytest.fixture(scope="session")
def converted(tmp_path_factory, convert_source):
    """converted(tp, pp=1, precision="bf16", kv="bf16", source=None) -> output dir, converted once per session."""
    from nemo_trt.build.convert import convert_checkpoint

    root = tmp_path_factory.mktemp("converted")
    cache: dict = {}

    def make(tp: int, pp: int = 1, precision: str = "bf16", kv: str = "bf16", source=None):
        src = source or convert_source
        key = (str(src), tp, pp, precision, kv)
        if key not in cache:
            out = root / f"{len(cache)}-tp{tp}-pp{pp}-{precision}-{kv}"
            convert_checkpoint(src, out, tp=tp, pp=pp, precision=precision, kv_cache_dtype=kv, progress=False)
            cache[key] = out
        return cache[key]

    return make
