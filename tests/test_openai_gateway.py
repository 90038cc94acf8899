"""The gateway over HTTP with the official openai client, against a scripted upstream.

Every wire detail and error path, fast: the gateway runs on uvicorn in a thread, its
upstream is tests/fixtures/fake_upstream.py (real tokenizer, one token per delta). The same
features against real Triton and the tiny model: tests/test_openai_e2e.py.
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import time

import httpx
import pytest

from fixtures.fake_upstream import TOKENIZER_DIR, FakeUpstream
from nemo_trt.serve.openai.protocol import ChatCompletion, ChatCompletionChunk, Completion
from nemo_trt.serve.openai.runner import GatewayThread
from nemo_trt.serve.openai.serving import GatewayConfig
from nemo_trt.serve.openai.upstream import UpstreamError

openai = pytest.importorskip("openai")

MODEL = "llama-3.3-nemotron-super-49b-v1"
THINK = "<think>\nThe user wants the sky colour. It is blue.\n</think>\n\nThe sky is blue."
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"},
                                                                          "days": {"type": "integer"}},
                                                           "required": ["city"]}}}
CALL = '<TOOLCALL>[get_weather(city="Paris", days=2), get_weather(city="Lima")]</TOOLCALL>'


def script(request):
    user = next(m["content"] for m in reversed(request.messages) if m["role"] in ("user", "tool"))
    if "CONTEXT" in user:
        return UpstreamError("rejected", "the prompt is 9000 tokens, longer than this engine's max input length "
                                         "of 2048: shorten it")
    if "CRASH" in user:
        return UpstreamError("failed", "generate failed: RuntimeError: boom")
    if "DOWN" in user:
        return UpstreamError("unavailable", "failed to connect to all addresses")
    if request.continue_final and request.messages[-1]["content"].startswith("<TOOLCALL>"):
        return 'city="Oslo")]</TOOLCALL>'
    if request.continue_final:
        return "The sky is blue."
    if user.startswith("TOOL:"):
        return CALL
    if request.messages[-1]["role"] == "tool":
        return f"It is {request.messages[-1]['content']} there."
    if user.startswith("LONG"):
        return "word " * 400
    return THINK if request.reasoning == "on" else "The sky is blue."


def start(upstream=None, **config):
    upstream = upstream or FakeUpstream(script, interval=0.0005)
    config.setdefault("tokenizer_dir", TOKENIZER_DIR)
    gateway = GatewayThread(GatewayConfig("fake:0", **config), upstream_factory=lambda: upstream)
    gateway.start()
    gateway.upstream = upstream
    return gateway


@pytest.fixture(scope="module")
def gateway():
    g = start(max_inflight=64)
    yield g
    g.stop()


@pytest.fixture(scope="module")
def client(gateway):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def ask(text, **kw):
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **kw}


def sse_events(gateway, path, body, headers=None):
    """Raw SSE events (parsed JSON, or the string [DONE])."""
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", gateway.url + path, json=body, headers=headers or {}) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            events = []
            for line in response.iter_lines():
                if line.startswith("data: "):
                    data = line[6:]
                    events.append(data if data == "[DONE]" else json.loads(data))
    return events


# --------------------------------------------------------------------------- chat
def test_chat_reasoning_on_and_off(client):
    on = client.chat.completions.create(**ask("sky?", extra_body={"chat_template_kwargs": {"thinking": True}}))
    assert on.choices[0].message.reasoning_content == "The user wants the sky colour. It is blue."
    assert on.choices[0].message.content == "The sky is blue." and "<think>" not in on.choices[0].message.content
    assert on.choices[0].finish_reason == "stop" and on.object == "chat.completion"
    assert on.id.startswith("chatcmpl-") and on.system_fingerprint == "nemo-trt-0123456789abcdef"
    assert on.usage.completion_tokens_details.reasoning_tokens > 0
    assert on.usage.total_tokens == on.usage.prompt_tokens + on.usage.completion_tokens
    off = client.chat.completions.create(**ask("sky?", extra_body={"chat_template_kwargs": {"thinking": False}}))
    assert off.choices[0].message.reasoning_content is None and off.choices[0].message.content == "The sky is blue."
    assert off.usage.completion_tokens_details.reasoning_tokens == 0
    # the model card's system switch, and the deployment default (on)
    switched = client.chat.completions.create(model=MODEL, messages=[
        {"role": "system", "content": "detailed thinking off"}, {"role": "user", "content": "sky?"}])
    assert switched.choices[0].message.reasoning_content is None
    default = client.chat.completions.create(**ask("sky?"))
    assert default.choices[0].message.reasoning_content


def test_chat_stream_chunks_follow_the_wire_format(gateway):
    events = sse_events(gateway, "/v1/chat/completions", ask("sky?", stream=True,
                                                             stream_options={"include_usage": True}))
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(e) for e in events[:-1]]
    for e in events[:-1]:
        openai.types.chat.ChatCompletionChunk.model_validate(e)
    assert len({c.id for c in chunks}) == 1 and chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    body = chunks[1:-2]
    assert "".join(c.choices[0].delta.reasoning_content or "" for c in body) == \
        "The user wants the sky colour. It is blue."
    assert "".join(c.choices[0].delta.content or "" for c in body) == "The sky is blue."
    assert all(c.choices[0].finish_reason is None for c in body)
    assert chunks[-2].choices[0].finish_reason == "stop" and chunks[-2].choices[0].delta.content is None
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens > 0
    # without include_usage: no usage chunk
    events = sse_events(gateway, "/v1/chat/completions", ask("sky?", stream=True))
    assert all(e == "[DONE]" or e["choices"] for e in events)


def test_chat_stream_with_the_sdk_sync_and_async(gateway, client):
    stream = client.chat.completions.create(**ask("sky?", stream=True))
    parts = [(getattr(c.choices[0].delta, "reasoning_content", None) or "", c.choices[0].delta.content or "")
             for c in stream if c.choices]
    assert "".join(p[1] for p in parts) == "The sky is blue." and "".join(p[0] for p in parts)

    async def go():
        async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as aclient:
            whole = await aclient.chat.completions.create(**ask("sky?"))
            text = ""
            async for chunk in await aclient.chat.completions.create(**ask("sky?", stream=True)):
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
            return whole.choices[0].message.content, text

    whole, streamed = asyncio.run(go())
    assert whole == streamed == "The sky is blue."


def test_tool_call_stream_deltas_equal_the_whole_answer(gateway, client):
    body = ask("TOOL: weather in Paris and Lima?", tools=[WEATHER])
    whole = client.chat.completions.create(**body)
    message = whole.choices[0].message
    assert whole.choices[0].finish_reason == "tool_calls" and message.content is None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == \
        [("get_weather", {"city": "Paris", "days": 2}), ("get_weather", {"city": "Lima"})]
    assert all(c.id.startswith("call_") and c.type == "function" for c in message.tool_calls)
    # the raw deltas: index on every one, id/type/name once per call, argument fragments after
    events = sse_events(gateway, "/v1/chat/completions", {**body, "stream": True})
    deltas = [d for e in events[:-1] for d in (e["choices"][0]["delta"].get("tool_calls") or [])]
    assert all("index" in d for d in deltas)
    for index in (0, 1):
        mine = [d for d in deltas if d["index"] == index]
        assert "id" in mine[0] and mine[0]["function"] == {"name": "get_weather", "arguments": ""}
        assert all("id" not in d and "name" not in d["function"] for d in mine[1:]) and len(mine) > 2
        assert "".join(d["function"]["arguments"] for d in mine) == message.tool_calls[index].function.arguments
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"
    # the SDK's own accumulation of the stream gives the same message
    with client.chat.completions.stream(**body) as stream:
        final = stream.get_final_completion()
    streamed = final.choices[0].message
    assert [(c.function.name, c.function.arguments) for c in streamed.tool_calls] == \
        [(c.function.name, c.function.arguments) for c in message.tool_calls]
    assert final.choices[0].finish_reason == "tool_calls"


def test_tool_result_turn_and_forced_choice(gateway, client):
    history = [{"role": "user", "content": "TOOL: weather in Paris?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                     "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "sunny"}]}]
    answer = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER])
    assert answer.choices[0].message.content == "It is sunny there."
    sent = gateway.upstream.requests[-1]
    assert sent.messages[-1] == {"role": "tool", "content": "sunny"}
    assert sent.messages[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert json.loads(sent.tools)[0]["function"]["name"] == "get_weather" and sent.reasoning == "off"
    named = client.chat.completions.create(**ask("weather?", tools=[WEATHER], tool_choice={
        "type": "function", "function": {"name": "get_weather"}}))
    assert named.choices[0].message.tool_calls[0].function.arguments == '{"city": "Oslo"}'
    assert gateway.upstream.requests[-1].messages[-1] == {"role": "assistant", "content": "<TOOLCALL>[get_weather("}
    plain = client.chat.completions.create(**ask("TOOL: x", tools=[WEATHER], tool_choice="none"))
    assert plain.choices[0].message.tool_calls is None and "<TOOLCALL>" in plain.choices[0].message.content
    assert gateway.upstream.requests[-1].tools is None


def test_malformed_tool_output_is_plain_content(gateway):
    upstream = FakeUpstream(lambda r: '<TOOLCALL>[get_weather(city=]</TOOLCALL>')
    g = start(upstream)
    try:
        c = openai.OpenAI(base_url=g.url + "/v1", api_key="x", max_retries=0)
        r = c.chat.completions.create(**ask("w", tools=[WEATHER]))
        assert r.choices[0].message.content == '<TOOLCALL>[get_weather(city=]</TOOLCALL>'
        assert r.choices[0].finish_reason == "stop" and r.choices[0].message.tool_calls is None
    finally:
        g.stop()


def test_thinking_budget_top_level_and_nvext(gateway, client):
    for extra in ({"max_thinking_tokens": 4}, {"nvext": {"max_thinking_tokens": 4}}):
        r = client.chat.completions.create(**ask("sky?", extra_body=extra))
        assert r.usage.completion_tokens_details.reasoning_tokens == 4
        assert r.choices[0].message.content == "The sky is blue."
        assert "The user wants the sky colour.".startswith(r.choices[0].message.reasoning_content)
        assert gateway.upstream.requests[-1].continue_final
    stream = client.chat.completions.create(**ask("sky?", stream=True, stream_options={"include_usage": True},
                                                  extra_body={"max_thinking_tokens": 4}))
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "The sky is blue."
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 4


def test_stop_seed_and_sampling_reach_triton(gateway, client):
    r = client.chat.completions.create(**ask("sky?", stop=["blue"], seed=7, temperature=0.3, top_p=0.9,
                                             max_completion_tokens=50, extra_body={"top_k": 5, "thinking": False,
                                                                                   "chat_template_kwargs": {
                                                                                       "thinking": False}}))
    assert r.choices[0].message.content == "The sky is " and r.choices[0].finish_reason == "stop"
    sent = gateway.upstream.requests[-1]
    assert (sent.seed, sent.top_k, sent.max_tokens, sent.stop_words) == (7, 5, 50, ["blue"])
    assert sent.temperature == pytest.approx(0.3) and sent.top_p == pytest.approx(0.9)
    client.chat.completions.create(**ask("sky?"))
    sent = gateway.upstream.requests[-1]
    # no sampling fields sent: preprocessing applies the model card's defaults per mode
    assert (sent.temperature, sent.top_p, sent.top_k, sent.seed) == (None, None, None, None)
    r = client.chat.completions.create(**ask("LONG", max_tokens=5))
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5


def test_completions(gateway, client):
    r = client.completions.create(model=MODEL, prompt="sky?", max_tokens=100)
    assert r.choices[0].text == THINK and r.object == "text_completion" and r.usage.completion_tokens > 0
    Completion.model_validate(r.model_dump())
    text = "".join(c.choices[0].text for c in client.completions.create(model=MODEL, prompt="sky?", stream=True)
                   if c.choices)
    assert text == THINK
    r = client.completions.create(model=MODEL, prompt=["sky?"],
                                  extra_body={"chat_template_kwargs": {"thinking": False}})
    assert r.choices[0].text == "The sky is blue."


def test_models_and_health(gateway, client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL] and models.data[0].max_model_len == 4096
    with httpx.Client() as http:
        assert http.get(gateway.url + "/v1/health/live").json()["status"] == "live"
        ready = http.get(gateway.url + "/v1/health/ready")
        assert ready.status_code == 200 and ready.json()["object"] == "health.response"
    down = start(FakeUpstream(ready=False))
    try:
        with httpx.Client() as http:
            assert http.get(down.url + "/v1/health/live").status_code == 200
            response = http.get(down.url + "/v1/health/ready")
            assert response.status_code == 503 and response.json()["error"]["code"] == "service_unavailable"
        c = openai.OpenAI(base_url=down.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as info:
            c.chat.completions.create(**ask("hi"))
        assert info.value.status_code == 503
        down.upstream.is_ready = True  # Triton came up: the gateway follows without a restart
        assert c.chat.completions.create(**ask("hi")).choices[0].message.content
        with httpx.Client() as http:
            assert http.get(down.url + "/v1/health/ready").status_code == 200
    finally:
        down.stop()


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("body, param, words", [
    (ask("hi", temperature=3), "temperature", "less than or equal to 2"),
    (ask("hi", n=2), "n", "n=2"),
    (ask("hi", logit_bias={"1": 5}), "logit_bias", "not supported"),
    (ask("hi", stream_options={"include_usage": True}), "stream_options", "stream: true"),
    (ask("hi", tool_choice="required"), "tool_choice", "needs tools"),
    (ask("hi", max_tokens=5, max_completion_tokens=6), "max_completion_tokens", "disagree"),
    (ask("hi", max_tokens=0), "max_tokens", "greater than or equal to 1"),
    (ask("hi", max_tokens=5000), "max_tokens", "max_seq_len"),
    (ask("hi", response_format={"type": "json_object"}), "response_format", "guided decoding"),
    (ask("hi", logprobs=True), "logprobs", "log probabilities"),
    (ask("hi", top_logprobs=2), "top_logprobs", "needs logprobs"),
    (ask("hi", seed=-1), "seed", "between 0"),
    (ask("hi", tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]),
     "tools[0].function.parameters", "JSON schema"),
    ({"model": MODEL, "messages": []}, "messages", "at least 1"),
    ({"model": MODEL}, "messages", "Field required"),
    ({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "Input should be"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content[0]", "text"),
    ({"model": MODEL, "messages": [{"role": "assistant", "content": "x"}]}, "messages", "no user message"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}]},
     "messages", "last message"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                                   {"role": "user", "content": "c"}]}, "messages", "only the first"),
    (ask("CONTEXT"), "messages", "max input length"),
    (ask("hi", chat_template_kwargs={"thinking": True}, tools=[WEATHER], tool_choice="required"),
     "tool_choice", "reasoning off"),
])
def test_bad_requests_are_400_naming_the_field(gateway, body, param, words):
    with httpx.Client() as http:
        response = http.post(gateway.url + "/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"] and error["type"] == "invalid_request_error"


def test_error_statuses_through_the_sdk(gateway, client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(**{**ask("hi"), "model": "gpt-4o"})
    assert info.value.code == "model_not_found" and info.value.param == "model"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**ask("CONTEXT"))
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(**ask("CRASH"))
    assert info.value.status_code == 500
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(**ask("DOWN"))
    assert info.value.status_code == 503
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=["a", "b"])
    assert info.value.param == "prompt"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="a", echo=True)
    assert info.value.param == "echo"
    with httpx.Client() as http:
        bad = http.post(gateway.url + "/v1/chat/completions", content=b"{not json",
                        headers={"content-type": "application/json"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
        missing = http.get(gateway.url + "/v1/nothing")
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    # mid-stream failure: an error event, then [DONE]
    events = sse_events(gateway, "/v1/chat/completions", ask("sky?", stream=True))
    assert events[-1] == "[DONE]"


def test_errors_before_the_first_token_of_a_stream_are_real_statuses(gateway):
    with httpx.Client() as http:
        response = http.post(gateway.url + "/v1/chat/completions", json=ask("CONTEXT", stream=True))
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"


def test_auth(monkeypatch):
    g = start(api_key="s3cret")
    try:
        good = openai.OpenAI(base_url=g.url + "/v1", api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(**ask("hi")).choices[0].message.content
        for key in ("wrong", "s3cret "[:-1] + "x"):
            with pytest.raises(openai.AuthenticationError) as info:
                openai.OpenAI(base_url=g.url + "/v1", api_key=key, max_retries=0).models.list()
            assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
        with httpx.Client() as http:
            assert http.post(g.url + "/v1/chat/completions", json=ask("hi")).status_code == 401
            assert http.get(g.url + "/v1/health/ready").status_code == 200  # probes carry no key
            assert http.get(g.url + "/metrics").status_code == 200
    finally:
        g.stop()
    monkeypatch.setenv("NEMO_TRT_API_KEY", "from-env")
    g = start()
    try:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=g.url + "/v1", api_key="nope", max_retries=0).models.list()
        assert openai.OpenAI(base_url=g.url + "/v1", api_key="from-env", max_retries=0).models.list().data
    finally:
        g.stop()


def test_body_limit_and_inflight_limit():
    g = start(FakeUpstream(script, interval=0.02), max_inflight=2, max_body_bytes=4096)
    try:
        with httpx.Client(timeout=30) as http:
            big = http.post(g.url + "/v1/chat/completions", json=ask("x" * 10000))
            assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
            streams = [http.stream("POST", g.url + "/v1/chat/completions", json=ask("LONG", stream=True))
                       for _ in range(2)]
            opened = [s.__enter__() for s in streams]
            assert all(r.status_code == 200 for r in opened)
            refused = http.post(g.url + "/v1/chat/completions", json=ask("hi"))
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["type"] == "rate_limit_error"
            for s in streams:
                s.__exit__(None, None, None)
        deadline = time.monotonic() + 10
        while g.upstream.cancelled.__len__() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(g.upstream.cancelled) == 2  # closing the streams cancelled their generations
        c = openai.OpenAI(base_url=g.url + "/v1", api_key="x", max_retries=0)
        assert c.chat.completions.create(**ask("hi")).choices[0].message.content  # slots were released
    finally:
        g.stop()


def test_disconnect_of_a_non_streamed_request_cancels_it():
    """The generation is cancelled upstream; a client hanging up is no server error in the log."""
    g = start(FakeUpstream(script, interval=0.02))
    errors: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = errors.append  # type: ignore[method-assign]
    logging.getLogger("uvicorn.error").addHandler(handler)  # after start: uvicorn configures its loggers
    try:
        body = json.dumps(ask("LONG")).encode()
        host, port = g.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            time.sleep(0.3)
        deadline = time.monotonic() + 10
        while not g.upstream.cancelled and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(g.upstream.cancelled) == 1 and not g.upstream.completed
        time.sleep(0.2)
        assert not errors, [r.getMessage() for r in errors]
    finally:
        logging.getLogger("uvicorn.error").removeHandler(handler)
        g.stop()


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_exposed_and_increasing(gateway, client):
    with httpx.Client() as http:
        before = http.get(gateway.url + "/metrics").text
        client.chat.completions.create(**ask("sky?"))
        list(client.chat.completions.create(**ask("sky?", stream=True)))
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(**ask("hi", n=3))
        after = http.get(gateway.url + "/metrics").text
        assert http.get(gateway.url + "/v1/metrics").status_code == 200
    for name in ("num_requests_running", "num_requests_waiting", "num_request_max", "prompt_tokens_total",
                 "generation_tokens_total", "time_to_first_token_seconds_bucket", "inter_token_latency_seconds_bucket",
                 "e2e_request_latency_seconds_count", "time_per_output_token_seconds_count",
                 "request_success_total", "request_prompt_tokens_count"):
        assert f"\n{name}" in after, name
    for name in ("generation_tokens_total", "prompt_tokens_total", "e2e_request_latency_seconds_count",
                 "time_to_first_token_seconds_count", "reasoning_tokens_total", "inter_token_latency_seconds_count"):
        assert _metric(after, name) > _metric(before, name), name
    assert _metric(after, "request_success_total") >= _metric(before, "request_success_total") + 2
    assert _metric(after, "request_failure_total") >= _metric(before, "request_failure_total") + 1
    assert _metric(after, "num_requests_running") == 0 and _metric(after, "num_requests_waiting") == 0
    assert 'model_name="llama-3.3-nemotron-super-49b-v1"' in after


def test_chat_completion_model_validates(client):
    r = client.chat.completions.create(**ask("sky?"))
    ChatCompletion.model_validate(r.model_dump())


def test_logprobs_when_the_ensemble_returns_them():
    g = start(FakeUpstream(lambda r: "Paris is big.", log_probs=True))
    try:
        c = openai.OpenAI(base_url=g.url + "/v1", api_key="x", max_retries=0)
        body = ask("x", logprobs=True, extra_body={"chat_template_kwargs": {"thinking": False}})
        whole = c.chat.completions.create(**body)
        entries = whole.choices[0].logprobs.content
        assert "".join(e.token for e in entries) == "Paris is big." and all(e.logprob == -0.5 for e in entries)
        assert entries[0].bytes == list(entries[0].token.encode())
        assert g.upstream.requests[-1].return_log_probs
        streamed = [lp for chunk in c.chat.completions.create(**body, stream=True) if chunk.choices
                    and chunk.choices[0].logprobs for lp in chunk.choices[0].logprobs.content]
        assert "".join(e.token for e in streamed) == "Paris is big." and all(e.logprob == -0.25 for e in streamed)
        completion = c.completions.create(model=MODEL, prompt="x", logprobs=0,
                                          extra_body={"chat_template_kwargs": {"thinking": False}})
        lp = completion.choices[0].logprobs
        assert "".join(lp.tokens) == "Paris is big." and lp.text_offset[0] == 0
        assert len(lp.token_logprobs) == len(lp.tokens)
        with pytest.raises(openai.BadRequestError) as info:
            c.chat.completions.create(**body, top_logprobs=3)
        assert info.value.param == "top_logprobs"
    finally:
        g.stop()


def test_writes_of_one_loop_turn_leave_in_one_socket_write():
    """uvicorn writes a response's head and body separately; the gateway's transport hands
    them over together at the end of the loop turn (serve/openai/coalesce.py)."""
    import asyncio

    from nemo_trt.serve.openai.coalesce import CoalescingTransport

    class Recorder(asyncio.Transport):
        def __init__(self):
            super().__init__()
            self.writes: list[bytes] = []
            self.closed = False

        def write(self, data):
            self.writes.append(bytes(data))

        def is_closing(self):
            return self.closed

        def close(self):
            self.closed = True

        def get_extra_info(self, name, default=None):
            return ("127.0.0.1", 1) if name == "peername" else default

    async def go():
        real = Recorder()
        transport = CoalescingTransport(real, asyncio.get_running_loop())
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.write(b"{}")
        assert real.writes == []  # held until the end of this turn
        await asyncio.sleep(0)
        assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}"]
        transport.write(b"data: 1\n\n")
        await asyncio.sleep(0)
        transport.write(b"data: 2\n\n")
        transport.close()  # what is held goes out before the close
        assert real.writes[1:] == [b"data: 1\n\n", b"data: 2\n\n"] and real.closed
        assert transport.get_extra_info("peername") == ("127.0.0.1", 1)

    asyncio.run(go())
