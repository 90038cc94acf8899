"""serve/client.py pure parts: request validation, tensors/JSON bodies, URL handling, folding deltas."""
from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from nemo_trt.serve.client import Delta, GenerateRequest, collect, normalize_url


def test_exactly_one_of_prompt_or_messages():
    with pytest.raises(ValidationError, match="exactly one"):
        GenerateRequest()
    with pytest.raises(ValidationError, match="exactly one"):
        GenerateRequest(prompt="a", messages=[{"role": "user", "content": "b"}])
    with pytest.raises(ValidationError):
        GenerateRequest(prompt="a", max_tokens=0)
    with pytest.raises(ValidationError):
        GenerateRequest(prompt="a", reasoning="maybe")
    with pytest.raises(ValidationError):
        GenerateRequest(prompt="a", unknown_field=1)


def test_tensors_only_what_is_set():
    tensors = GenerateRequest(prompt="hi", max_tokens=5).tensors(stream=True)
    assert set(tensors) == {"text_input", "max_tokens", "stream", "exclude_input_in_output"}
    assert tensors["text_input"][0].tolist() == [b"hi"] and tensors["text_input"][1] == "BYTES"
    assert tensors["stream"][0].tolist() == [True] and tensors["stream"][1] == "BOOL"
    full = GenerateRequest(messages=[{"role": "user", "content": "hé"}], reasoning="off", temperature=0.5,
                           top_p=0.9, top_k=3, seed=2**40, stop_words=["a", "bc"], end_id=7).tensors(stream=False)
    assert "text_input" not in full and full["messages"][0][0] == b'[{"role": "user", "content": "h\\u00e9"}]'
    assert full["seed"][0].dtype == np.uint64 and full["seed"][0].tolist() == [2**40]
    assert full["temperature"][1] == "FP32" and full["top_k"][1] == "INT32" and full["end_id"][0].tolist() == [7]
    assert full["stop_words"][0].tolist() == [b"a", b"bc"] and full["reasoning"][0].tolist() == [b"off"]
    assert full["stream"][0].tolist() == [False]


def test_generate_body_maps_scalars_and_lists():
    body = GenerateRequest(prompt="hi", max_tokens=5, stop_words=["x"], temperature=0.0).generate_body(stream=True)
    assert body == {"text_input": "hi", "max_tokens": 5, "stream": True, "exclude_input_in_output": True,
                    "temperature": 0.0, "stop_words": ["x"]}


@pytest.mark.parametrize("url, protocol, expected", [
    (None, "grpc", "127.0.0.1:8001"), (None, "http", "http://127.0.0.1:8000"),
    ("host", "grpc", "host:8001"), ("http://host:9000/", "http", "http://host:9000"),
    ("grpc://host:9001", "grpc", "host:9001"), ("host:9000", "http", "http://host:9000"),
])
def test_normalize_url(url, protocol, expected):
    assert normalize_url(url, protocol) == expected


def test_collect_folds_deltas_and_timings():
    request = GenerateRequest(prompt="hi", max_tokens=3)
    deltas = [Delta(text="<think>", reasoning="", num_output_tokens=1, time=0.10, token_ids=[1]),
              Delta(text="a", reasoning="a", num_output_tokens=2, time=0.15, token_ids=[2]),
              Delta(text="b", answer="b", num_output_tokens=3, time=0.25, token_ids=[3])]
    result = collect(iter(deltas), request, start_time=0.0)
    assert (result.text, result.reasoning, result.answer) == ("<think>ab", "a", "b")
    assert result.token_ids == [1, 2, 3] and result.num_output_tokens == 3
    assert result.finish_reason == "length"  # hit max_tokens
    assert result.ttft == pytest.approx(0.10) and result.itl == pytest.approx(0.075)
    assert result.num_responses == 3
    single = collect(iter([Delta(text="x", num_output_tokens=2, time=0.3)]), request, start_time=0.0)
    assert single.finish_reason == "stop" and single.itl is None and single.ttft == pytest.approx(0.3)
    empty = collect(iter([]), request)
    assert empty.num_output_tokens is None and empty.finish_reason is None and empty.text == ""
