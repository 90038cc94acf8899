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
