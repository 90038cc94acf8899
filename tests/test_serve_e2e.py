"""End to end on CPU: tiny checkpoint → converter → repository (reference backend) → tritonserver → client.

One server for the whole session (tests/conftest.py `reference_server`). The tiny model is
trained on the Nemotron protocol, so reasoning on/off must give different, correctly split
outputs that stop at <|eot_id|>.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("pytriton")
grpcclient = pytest.importorskip("tritonclient.grpc")

from fixtures.cli_json import read_json_block  # noqa: E402
from fixtures.triton_stream import stream_call  # noqa: E402
from nemo_trt.serve.client import (  # noqa: E402
    GenerateError,
    GenerateRequest,
    ServerUnavailable,
    generate,
    stream_generate,
)

pytestmark = pytest.mark.slow

EOT_ID = 128009


def ask(question: str, reasoning: str, **kw) -> GenerateRequest:
    kw.setdefault("temperature", 0.0)
    kw.setdefault("max_tokens", 96)
    return GenerateRequest(messages=[{"role": "user", "content": question}], reasoning=reasoning, **kw)


@pytest.fixture(scope="module")
def oracle(tiny_checkpoint_dir):
    """Greedy token ids the reference model generates in-process from the HF checkpoint (no server).

    The tiny model is small and its answers may be wrong; what must hold is that the server
    returns exactly what the model generates (stop token excluded).
    """
    from nemo_trt.build.tiny import prompt_ids
    from nemo_trt.reference import ReferenceModel

    model = ReferenceModel.from_hf(tiny_checkpoint_dir)
    cache = {}

    def expected(question: str, reasoning: str) -> list[int]:
        if (question, reasoning) not in cache:
            out = model.generate(prompt_ids(question, reasoning == "on"), 96, stop_ids=[EOT_ID])
            assert out[-1] == EOT_ID, "the tiny model must end its turn within 96 tokens"
            cache[question, reasoning] = out[:-1]
        return cache[question, reasoning]

    return expected


def test_reasoning_on_and_off_are_split_and_stop_at_eot(reference_server, oracle):
    url = reference_server.grpc_url
    question = "What colour is grass?"
    on = generate(url, ask(question, "on"))
    off = generate(url, ask(question, "off"))
    assert on.text.startswith("<think>") and "</think>" in on.text
    assert on.reasoning.strip() and "<think>" not in on.reasoning and "</think>" not in on.reasoning
    assert on.answer.strip() and on.text.endswith(on.answer) and on.reasoning.strip() in on.text
    assert off.reasoning == "" and off.answer.strip() and off.text == off.answer and "<think>" not in off.text
    assert on.text != off.text
    for result in (on, off):
        assert result.finish_reason == "stop" and result.num_output_tokens < 96
        assert result.token_ids and EOT_ID not in result.token_ids  # stopped at <|eot_id|>, not returned
        assert "<|eot_id|>" not in result.text
    # token for token what the reference model generates in-process
    assert on.token_ids == oracle(question, "on")
    assert off.token_ids == oracle(question, "off")


def test_streamed_deltas_concatenate_to_non_streamed(reference_server, oracle):
    url = reference_server.grpc_url
    request = ask("What is 2 plus 5?", "on")
    whole = generate(url, request, stream=False)
    deltas = list(stream_generate(url, request))
    assert whole.num_responses == 1
    assert len(deltas) >= whole.num_output_tokens  # one response per token
    assert "".join(d.text for d in deltas) == whole.text
    assert "".join(d.reasoning for d in deltas) == whole.reasoning
    assert "".join(d.answer for d in deltas) == whole.answer
    assert [t for d in deltas for t in d.token_ids] == whole.token_ids
    counts = [d.num_output_tokens for d in deltas if d.num_output_tokens is not None]
    assert counts == sorted(counts) and counts[-1] == whole.num_output_tokens
    assert whole.token_ids == oracle("What is 2 plus 5?", "on")
    streamed = generate(url, request, stream=True)
    assert streamed.text == whole.text and streamed.ttft is not None and streamed.itl is not None
    assert streamed.ttft <= streamed.total_time


def test_http_generate_stream_matches_grpc(reference_server, oracle):
    request = ask("What colour is grass?", "off")
    grpc_result = generate(reference_server.grpc_url, request)
    http_streamed = generate(reference_server.http_url, request, protocol="http", stream=True)
    http_whole = generate(reference_server.http_url, request, protocol="http", stream=False)
    assert grpc_result.token_ids == oracle("What colour is grass?", "off")
    assert http_streamed.text == http_whole.text == grpc_result.text
    assert http_streamed.num_output_tokens == grpc_result.num_output_tokens
    assert http_streamed.num_responses > 1 and http_whole.num_responses == 1


def test_max_tokens_and_seeded_sampling(reference_server):
    url = reference_server.grpc_url
    short = generate(url, ask("What is the capital of Japan?", "on", max_tokens=3))
    assert short.num_output_tokens == 3 and short.finish_reason == "length"
    sampled = [generate(url, ask("What is the capital of Japan?", "on", temperature=1.5, seed=seed, max_tokens=24))
               for seed in (7, 7, 8)]
    assert sampled[0].token_ids == sampled[1].token_ids  # same seed, same tokens
    assert sampled[0].num_output_tokens >= 1


def _direct_tensorrt_llm(server, **tensors):
    """Call the tensorrt_llm (reference) model directly over the gRPC stream; (responses, error)."""
    inputs = []
    for name, (value, dtype) in tensors.items():
        array = np.array([value], dtype=dtype)
        tensor = grpcclient.InferInput(name, list(array.shape), {np.int32: "INT32", bool: "BOOL",
                                                                 np.float32: "FP32"}[dtype])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return stream_call(server.grpc_url, "tensorrt_llm", inputs)


def test_backend_contract_and_bad_inputs(reference_server, oracle):
    base = {"input_ids": ([128000, 9906, 1917], np.int32), "input_lengths": ([3], np.int32),
            "request_output_len": ([4], np.int32)}
    responses, error = _direct_tensorrt_llm(reference_server, **base, streaming=([True], bool))
    assert error is None and len(responses) == 4
    assert all(r["output_ids"].shape == (1, 1, 1) for r in responses)
    assert [int(r["num_output_tokens"][0, 0]) for r in responses] == [1, 2, 3, 4]
    responses, error = _direct_tensorrt_llm(reference_server, **base, exclude_input_in_output=([False], bool))
    assert error is None and len(responses) == 1
    assert responses[0]["output_ids"][0, 0, :3].tolist() == [128000, 9906, 1917]
    assert int(responses[0]["sequence_length"][0, 0]) == 7

    for bad, message in (({"input_ids": ([128000, 999999], np.int32), "input_lengths": ([2], np.int32)}, "range"),
                         ({"beam_width": ([4], np.int32)}, "beam_width"),
                         ({"request_output_len": ([0], np.int32)}, "request_output_len")):
        _, error = _direct_tensorrt_llm(reference_server, **{**base, **bad})
        assert error is not None and message in str(error)
    # the ensemble: an error response, then the next request is served normally
    with pytest.raises(GenerateError):
        generate(reference_server.grpc_url, ask("What is 2 plus 5?", "off", max_tokens=10**7))
    assert generate(reference_server.grpc_url, ask("What is 2 plus 5?", "off")).token_ids == \
        oracle("What is 2 plus 5?", "off")


def test_sixteen_concurrent_streams(reference_server, reference_repository, oracle):
    from nemo_trt.serve.launcher import read_repository

    backend = next(m for m in read_repository(reference_repository) if m.name == "tensorrt_llm")
    max_active = int(backend.parameters["reference_max_active"])
    url = reference_server.grpc_url
    questions = [f"What is the capital of {c}?" for c in ("France", "Italy", "Spain", "Japan", "Egypt", "Kenya")] + \
                [f"What is {a} plus {b}?" for a, b in ((1, 2), (3, 3), (4, 1), (9, 2), (2, 8), (5, 5))]
    # mostly reasoning off (short answers) to keep the test quick on 2 cores; 4 with reasoning on
    requests = [ask(q, "off") for q in questions] + [ask(q, "on") for q in questions[:4]]
    assert len(requests) == 16
    starts, ends = {}, {}

    def run(index: int):
        deltas = []
        for delta in stream_generate(url, requests[index]):
            starts.setdefault(index, time.perf_counter())
            deltas.append(delta)
        ends[index] = time.perf_counter()
        return [t for d in deltas for t in d.token_ids], "".join(d.text for d in deltas), deltas[-1].num_output_tokens

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(run, range(16)))
    for index, (ids, text, count) in enumerate(results):
        assert count == len(ids) and count < 96, (index, text)
        assert text.startswith("<think>") == (requests[index].reasoning == "on")
    for index in (0, 7, 12, 15):  # interleaving does not change greedy output
        question = requests[index].messages[0]["content"]
        assert results[index][0] == oracle(question, requests[index].reasoning), index
    # Fair scheduling: `max_active` streams were generating at the same time (between their first
    # and last token), not one after another. (Not "all started before any finished": a short
    # answer that reaches the backend a little before the others may legitimately finish first.)
    overlap = max(sum(1 for i in starts if starts[i] <= starts[j] < ends[i]) for j in starts)
    assert overlap >= min(16, max_active), sorted((starts[i], ends[i]) for i in starts)


def test_client_disconnect_mid_stream_keeps_server_serving(reference_server, oracle):
    url = reference_server.grpc_url
    request = GenerateRequest(prompt="The capital of", max_tokens=200, temperature=0.0)
    stream = stream_generate(url, request)
    first = [next(stream), next(stream)]
    stream.close()  # cancels the request on the server
    assert all(d.text is not None for d in first)
    # HTTP: drop the TCP connection after the first event
    host, port = reference_server.http_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    body = json.dumps({"text_input": "The capital of", "max_tokens": 200, "stream": True})
    connection.request("POST", "/v2/models/ensemble/generate_stream", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data:")
    connection.sock.close()
    connection.close()
    assert reference_server.is_ready()
    after = generate(url, ask("What colour is snow?", "off"))
    assert after.token_ids == oracle("What colour is snow?", "off")


def test_chat_command_against_server(reference_server):
    from click.testing import CliRunner

    from nemo_trt.commands.chat import command

    on = generate(reference_server.grpc_url, ask("What colour is grass?", "on"))
    off = generate(reference_server.grpc_url, ask("What colour is grass?", "off"))
    runner = CliRunner()
    result = runner.invoke(command, ["What colour is grass?", "--reasoning", "on", "--temperature", "0",
                                     "--url", reference_server.grpc_url])
    assert result.exit_code == 0, result.output
    assert on.reasoning.strip() in result.output and on.answer.strip() in result.output
    assert "TTFT" in result.output and "<think>" not in result.output
    result = runner.invoke(command, ["What colour is grass?", "--reasoning", "off", "--temperature", "0", "--json",
                                     "--protocol", "http", "--url", reference_server.http_url, "--no-stream"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["answer"] == off.answer and data["reasoning"] == "" and data["token_ids"] == off.token_ids
    assert data["finish_reason"] == "stop" and data["num_responses"] == 1


def test_client_errors_when_server_is_down():
    with pytest.raises(ServerUnavailable, match="cannot reach"):
        generate("127.0.0.1:1", ask("hi", "off"))
    with pytest.raises(ServerUnavailable, match="cannot reach"):
        generate("127.0.0.1:1", ask("hi", "off"), protocol="http")


def test_client_error_when_model_missing(reference_server):
    with pytest.raises(ServerUnavailable, match="not ready"):
        generate(reference_server.grpc_url, ask("hi", "off", model="no_such_model"))
    with pytest.raises(ServerUnavailable, match="not ready"):
        generate(reference_server.http_url, ask("hi", "off", model="no_such_model"), protocol="http")


def test_serve_command_starts_and_stops_on_ctrl_c(reference_repository, tmp_path, oracle):
    process = subprocess.Popen(
        [sys.executable, "-m", "nemo_trt.cli", "serve", "--repo", str(reference_repository), "--http-port", "0",
         "--grpc-port", "0", "--metrics-port", "0", "--json", "--log-file", str(tmp_path / "server.log")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        endpoints = read_json_block(process.stdout)
        assert endpoints["grpc"].startswith("127.0.0.1:")
        result = generate(endpoints["grpc"], ask("What is the capital of Peru?", "off"))
        assert result.token_ids == oracle("What is the capital of Peru?", "off")
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
        server_pid = endpoints["pid"]
        time.sleep(0.2)
        with pytest.raises(ProcessLookupError):
            os.kill(server_pid, 0)
    finally:
        if process.poll() is None:
            process.kill()


def test_log_probs_from_the_reference_backend(reference_server):
    """return_log_probs passes through the ensemble to tensorrt_llm (the engine, or here the CPU
    reference backend): one log-probability per streamed token, cumulative sum alongside."""
    import tritonclient.grpc as grpcclient
    from fixtures.triton_stream import stream_call

    def tensor(name, value, dtype):
        array = np.array([[value]], dtype=object if dtype == "BYTES" else None)
        if dtype == "BOOL":
            array = array.astype(bool)
        elif dtype == "INT32":
            array = array.astype(np.int32)
        t = grpcclient.InferInput(name, [1, 1], dtype)
        t.set_data_from_numpy(array)
        return t

    inputs = [tensor("text_input", b"What is the capital of France?", "BYTES"), tensor("max_tokens", 12, "INT32"),
              tensor("stream", True, "BOOL"), tensor("reasoning", b"off", "BYTES"),
              tensor("return_log_probs", True, "BOOL")]
    outputs, error = stream_call(reference_server.grpc_url, "ensemble", inputs)
    assert error is None, error
    per_token = [float(x) for o in outputs for x in o["output_log_probs"].reshape(-1)]
    ids = [int(x) for o in outputs for x in o["output_ids"].reshape(-1)]
    assert len(per_token) == len(ids) > 0 and all(lp <= 0.0 for lp in per_token)
    cumulative = float(outputs[-1]["cum_log_probs"].reshape(-1)[0])
    assert abs(cumulative - sum(per_token)) < 1e-3
    plain, error = stream_call(reference_server.grpc_url, "ensemble", inputs[:4])
    assert error is None and all("output_log_probs" not in o for o in plain)  # only when asked, like TRT-LLM


def test_token_ensemble_parity_on_the_reference_backend(reference_server, reference_repository):
    """What `nemo-trt selftest --gpu` checks on the engines: ensemble_tokens + client-side text equals
    the ensemble's text_output, streamed and not (here on the CPU reference backend)."""
    from nemo_trt.serve.token_parity import token_parity

    report = token_parity(reference_server.grpc_url, reference_repository / "preprocessing" / "tokenizer",
                          max_tokens=24)
    assert report.passed, report.to_dict()
    assert len(report.cases) == 6 and all(c.ids_equal and c.token_text for c in report.cases)
    assert {c.stream for c in report.cases} == {True, False}
