"""Tool calling end to end with the official openai client: gateway -> tritonserver -> tiny model.

The tiny model (recipe v6, nemo_trt.build.tiny.tool_cases) learnt the Super v1 tool protocol:
given the tools in the card's prompt it answers `<TOOLCALL>[get_weather(city="Paris")]</TOOLCALL>`
(both reasoning modes), and given the tool's result in a `tool` turn it answers from it. So the
gateway's whole tool path runs for real: tools rendered by preprocessing, the call parsed into
OpenAI `tool_calls` (streamed and not: the concatenated deltas equal the whole answer), the
history with the call and its result rendered back.
"""
from __future__ import annotations

import asyncio
import json

import pytest

from fixtures.cli_json import start_gateway, stop_gateway

from nemo_trt.build.tiny import TOOLS, tool_cases

openai = pytest.importorskip("openai")
pytest.importorskip("pytriton")

pytestmark = pytest.mark.slow

MODEL = "llama-3.3-nemotron-super-49b-v1"
CASES = [c for c in tool_cases() if c.result and c.tools == TOOLS]  # a call and a result turn each


@pytest.fixture(scope="module")
def gateway(reference_server, reference_repository, tmp_path_factory):
    g = start_gateway(reference_server.grpc_url, reference_repository,
                      tmp_path_factory.mktemp("gateway-tools") / "gateway.log")
    yield g
    assert stop_gateway(g) == 0


@pytest.fixture(scope="module")
def client(gateway):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def request(case, thinking, second_turn=False):
    return {"model": MODEL, "messages": case.messages(second_turn=second_turn), "tools": list(case.tools),
            "temperature": 0.0, "max_tokens": 80, "extra_body": {"chat_template_kwargs": {"thinking": thinking}}}


@pytest.mark.parametrize("thinking", [False, True])
def test_tool_call_parsed_stream_equals_whole(client, thinking):
    case = CASES[0]
    whole = client.chat.completions.create(**request(case, thinking))
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == \
        [(case.call.name, case.call.arguments)]
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_") and call.type == "function"
    assert (choice.message.reasoning_content or None) == (case.reasoning if thinking else None)
    chunks = list(client.chat.completions.create(**request(case, thinking), stream=True))
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id and deltas[0].function.name == case.call.name and deltas[0].function.arguments == ""
    assert all(d.index == 0 and d.id is None and d.function.name is None for d in deltas[1:])
    assert "".join(d.function.arguments for d in deltas) == call.function.arguments  # == the whole answer
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    with client.chat.completions.stream(**request(case, thinking)) as stream:  # the SDK's own accumulation
        final = stream.get_final_completion()
    assert [(c.function.name, c.function.arguments) for c in final.choices[0].message.tool_calls] == \
        [(call.function.name, call.function.arguments)]


def test_every_trained_call_async(gateway):
    async def go():
        async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0,
                                      timeout=120) as aclient:
            return await asyncio.gather(*(aclient.chat.completions.create(**request(c, False)) for c in CASES))

    for case, answer in zip(CASES, asyncio.run(go())):
        calls = answer.choices[0].message.tool_calls
        assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == \
            [(case.call.name, case.call.arguments)], case.question


@pytest.mark.parametrize("thinking", [False, True])
def test_tool_result_turn(client, thinking):
    case = CASES[0]
    r = client.chat.completions.create(**request(case, thinking, second_turn=True))
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content == case.answer
    assert (r.choices[0].message.reasoning_content or None) == (case.result_reasoning if thinking else None)
