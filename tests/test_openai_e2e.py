"""The OpenAI API end to end: official openai client -> `nemo-trt openai` -> tritonserver -> tiny model.

The gateway runs as its own process (the CLI, as users start it) against the session's
reference server (tests/conftest.py): the CPU reference backend on the trained tiny model,
about 30 ms a token, so requests stay short. What the gateway returns is compared with
what the ensemble returns directly (nemo_trt.serve.client) for the same request.
"""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from fixtures.cli_json import start_gateway, stop_gateway
from nemo_trt.serve.client import GenerateRequest, generate

openai = pytest.importorskip("openai")
pytest.importorskip("pytriton")

pytestmark = pytest.mark.slow

MODEL = "llama-3.3-nemotron-super-49b-v1"
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def gateway(reference_server, reference_repository, tmp_path_factory):
    g = start_gateway(reference_server.grpc_url, reference_repository,
                      tmp_path_factory.mktemp("gateway") / "gateway.log", "--max-inflight", "64")
    yield g
    assert stop_gateway(g) == 0
    log = open(g.log_path).read()
    assert "Traceback" not in log and "Exception" not in log, log[-3000:]


@pytest.fixture(scope="module")
def client(gateway):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def chat(question, thinking, **kw):
    return {"model": MODEL, "messages": [{"role": "user", "content": question}], "temperature": 0.0,
            "max_tokens": kw.pop("max_tokens", 96), "extra_body": {"chat_template_kwargs": {"thinking": thinking},
                                                                 **kw.pop("extra_body", {})}, **kw}


@pytest.fixture(scope="module")
def direct(reference_server):
    """What the ensemble itself answers (greedy), for comparison."""
    cache = {}

    def answer(question, reasoning):
        if (question, reasoning) not in cache:
            cache[question, reasoning] = generate(reference_server.grpc_url, GenerateRequest(
                messages=[{"role": "user", "content": question}], reasoning=reasoning, temperature=0.0,
                max_tokens=96))
        return cache[question, reasoning]

    return answer


def test_chat_reasoning_apart_from_the_answer(client, direct):
    on = client.chat.completions.create(**chat(QUESTION, True))
    off = client.chat.completions.create(**chat(QUESTION, False))
    want_on, want_off = direct(QUESTION, "on"), direct(QUESTION, "off")
    message = on.choices[0].message
    assert message.reasoning_content == want_on.reasoning.strip() and "Paris" in message.reasoning_content
    assert message.content == want_on.answer and "<think>" not in message.content + message.reasoning_content
    assert on.usage.completion_tokens == want_on.num_output_tokens and on.choices[0].finish_reason == "stop"
    reasoning_tokens = on.usage.completion_tokens_details.reasoning_tokens
    assert 0 < reasoning_tokens < on.usage.completion_tokens
    assert off.choices[0].message.reasoning_content is None and off.choices[0].message.content == want_off.answer
    assert off.usage.completion_tokens_details.reasoning_tokens == 0
    assert on.usage.prompt_tokens > 0 and on.model == MODEL and on.system_fingerprint.startswith("nemo-trt-")
    # the model card's switch: a `detailed thinking off` system message
    switched = client.chat.completions.create(model=MODEL, temperature=0.0, max_tokens=96, messages=[
        {"role": "system", "content": "detailed thinking off"}, {"role": "user", "content": QUESTION}])
    assert switched.choices[0].message.content == want_off.answer


def test_stream_deltas_equal_the_whole_answer_async(gateway, client):
    whole = client.chat.completions.create(**chat(QUESTION, True))

    async def go():
        async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as aclient:
            stream = await aclient.chat.completions.create(**chat(QUESTION, True), stream=True,
                                                           stream_options={"include_usage": True})
            return [chunk async for chunk in stream]

    chunks = asyncio.run(go())
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == \
        whole.choices[0].message.reasoning_content
    assert "".join(d.content or "" for d in deltas) == whole.choices[0].message.content
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_completions(client, direct):
    want = direct(QUESTION, "off")
    r = client.completions.create(model=MODEL, prompt=QUESTION, max_tokens=96, temperature=0.0,
                                  extra_body={"chat_template_kwargs": {"thinking": False}})
    assert r.choices[0].text == want.text and r.usage.completion_tokens == want.num_output_tokens
    streamed = client.completions.create(model=MODEL, prompt=QUESTION, max_tokens=96, temperature=0.0, stream=True,
                                         extra_body={"chat_template_kwargs": {"thinking": False}})
    assert "".join(c.choices[0].text for c in streamed if c.choices) == want.text


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_budget_cuts_the_thought_and_the_model_answers(client, direct, stream):
    full = direct(QUESTION, "on")
    request = chat(QUESTION, True, extra_body={"nvext": {"max_thinking_tokens": 6}}, max_tokens=60)
    if stream:
        chunks = list(client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
        reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
    else:
        r = client.chat.completions.create(**request)
        reasoning, content, usage = r.choices[0].message.reasoning_content, r.choices[0].message.content, r.usage
    assert usage.completion_tokens_details.reasoning_tokens == 6  # cut at the budget
    assert reasoning and full.reasoning.strip().startswith(reasoning) and len(reasoning) < len(full.reasoning.strip())
    # and the model still answered (the tiny model, never trained on cut thoughts, may ramble first)
    assert content.strip() and "<think>" not in content and "</think>" not in content
    assert usage.completion_tokens > 6


def test_errors_against_the_real_server(client, reference_repository):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**chat("word " * 5000, False))
    assert info.value.code == "context_length_exceeded" and info.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**chat(QUESTION, False, max_tokens=10**6))
    assert info.value.param == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(**{**chat(QUESTION, False), "model": "gpt-4o"})
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**chat(QUESTION, False, n=2))
    assert info.value.param == "n"
    # presence_penalty reaches the CPU reference backend, which refuses it: a 400 with its words
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**chat(QUESTION, False, presence_penalty=0.5))
    assert "presence_penalty" in str(info.value)


def test_logprobs_where_the_engine_returns_them(client, gateway):
    with httpx.Client() as http:
        ensemble = http.get(gateway.url + "/v1/models").json()
    assert ensemble["data"][0]["id"] == MODEL
    try:
        r = client.chat.completions.create(**chat(QUESTION, False), logprobs=True)
    except openai.BadRequestError as exc:  # a deployment without output_log_probs says so
        assert exc.param == "logprobs" and "log probabilities" in str(exc)
    else:
        entries = r.choices[0].logprobs.content
        assert entries and "".join(e.token for e in entries) == r.choices[0].message.content
        assert all(e.logprob <= 0 for e in entries)


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def test_concurrent_streams_with_disconnects_and_metrics(gateway, client, direct, reference_server):
    """32 streams at once, every other one dropped by its client after its first chunks:
    the rest complete correctly, nothing fails on the server, all slots come back."""
    questions = [f"What is the capital of {c}?" for c in ("France", "Italy", "Spain", "Japan")] + \
                [f"What colour is {x}?" for x in ("grass", "snow", "coal", "a banana")]
    with httpx.Client() as http:
        before = http.get(gateway.url + "/metrics").text

    async def one(aclient, i):
        question = questions[i % len(questions)]
        stream = await aclient.chat.completions.create(**chat(question, False, max_tokens=24), stream=True)
        text = ""
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
                if i % 2:
                    await stream.close()  # the client leaves mid-answer
                    return i, question, None
        return i, question, text

    async def go():
        async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0,
                                      timeout=300) as aclient:
            return await asyncio.gather(*(one(aclient, i) for i in range(32)))

    results = asyncio.run(go())
    for i, question, text in results:
        if text is not None:
            assert text == direct(question, "off").answer, (i, question)
    deadline = time.monotonic() + 30
    while True:  # the dropped streams are cancelled inside Triton too: the server drains
        with httpx.Client() as http:
            after = http.get(gateway.url + "/metrics").text
        if _metric(after, "num_requests_running") + _metric(after, "num_requests_waiting") == 0 or \
                time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert _metric(after, "num_requests_running") == 0 and _metric(after, "num_requests_waiting") == 0
    assert _metric(after, "request_failure_total") == _metric(before, "request_failure_total")  # zero errors
    assert _metric(after, 'request_success_total{finished_reason="stop"') >= 0
    finished = _metric(after, "request_success_total") - _metric(before, "request_success_total")
    assert finished == 32
    assert _metric(after, "generation_tokens_total") > _metric(before, "generation_tokens_total")
    assert _metric(after, "time_to_first_token_seconds_count") - _metric(before, "time_to_first_token_seconds_count") \
        == 32
    assert reference_server.is_ready()
    # and the server still answers correctly
    r = client.chat.completions.create(**chat(QUESTION, False))
    assert r.choices[0].message.content == direct(QUESTION, "off").answer
