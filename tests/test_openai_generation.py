"""One request's generation (nemo_trt.serve.openai.generation) against a scripted upstream.

The upstream is tests/fixtures/fake_upstream.py: real tokenizer, one token per streamed
delta, records what the gateway sent and which generations it cancelled. Covers the
thinking budget's two legs, stop strings, reasoning token counts, finish reasons, tool
calls with a forced start, log probs.
"""
from __future__ import annotations

import asyncio

import jsonschema
import pytest

from fixtures.fake_upstream import TOKENIZER, FakeUpstream, StockLayoutUpstream, last_user
from nemo_trt.model_facts import load_serving_facts
from nemo_trt.serve.openai.budget import ThinkingBudget
from nemo_trt.serve.openai.generation import Generation, GenerationPlan
from nemo_trt.serve.openai.prompt_length import PromptCounter
from nemo_trt.serve.openai.tools import ToolPlan
from nemo_trt.serve.preprocess import RequestFields
from nemo_trt.serve.openai.upstream import UpstreamRequest, deployment_from_configs

THOUGHT = "The user asks for the capital of France. France is in Europe. Its capital is Paris, a big city."
SCRIPT = f"<think>\n{THOUGHT}\n</think>\n\nThe capital of France is Paris."


def deployment(upstream: FakeUpstream):
    async def load():
        return deployment_from_configs(await upstream.model_config("ensemble"),
                                       await upstream.model_config("preprocessing"))
    return asyncio.run(load())


def run(upstream, tokenizer=TOKENIZER, counter=None, **plan_kw):
    request = plan_kw.pop("request", None) or UpstreamRequest(
        messages=[{"role": "user", "content": "SCRIPT:" + SCRIPT}], reasoning=plan_kw.get("mode", "on"))
    plan_kw.setdefault("mode", "on")
    if "max_tokens" in plan_kw:
        request.max_tokens = plan_kw["max_tokens"]
    if "stop" in plan_kw:
        request.stop_words = plan_kw["stop"]
    plan = GenerationPlan(request=request, **plan_kw)
    generation = Generation(upstream, plan, deployment(upstream), tokenizer, prompt_counter=counter)

    async def go():
        return [e async for e in generation.events()]

    events = asyncio.run(go())
    return generation, events


def joined(events, name):
    return "".join(getattr(e, name) for e in events)


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("with_tokenizer", [True, False])
def test_reasoning_split_and_counted(stream, with_tokenizer):
    upstream = FakeUpstream()
    generation, events = run(upstream, TOKENIZER if with_tokenizer else None, client_stream=stream)
    assert joined(events, "reasoning") == THOUGHT
    assert joined(events, "content") == "The capital of France is Paris."
    assert joined(events, "text") == SCRIPT  # raw text, for /v1/completions
    o = generation.outcome
    ids = TOKENIZER.encode(SCRIPT, add_special_tokens=False).ids
    assert o.completion_tokens == len(ids) and o.finish_reason == "stop" and o.prompt_tokens > 0
    thought_tokens = next(k for k in range(len(ids) + 1) if "</think>" in TOKENIZER.decode(ids[:k]))
    assert o.reasoning_tokens == thought_tokens
    # upstream streaming only where needed: client streams, or nothing else can count the thought
    assert upstream.requests[0].stream == (stream or not with_tokenizer)
    if stream:
        assert len(events) >= len(ids)  # one event per token


def test_reasoning_off_counts_no_reasoning():
    upstream = FakeUpstream(lambda r: "Paris.")
    generation, events = run(upstream, mode="off", client_stream=True)
    assert joined(events, "content") == "Paris." and generation.outcome.reasoning_tokens == 0
    assert upstream.requests[0].reasoning == "off"


@pytest.mark.parametrize("stream", [True, False])
def test_budget_closes_the_thought_and_the_model_answers(stream):
    def script(request):
        if request.continue_final:  # the second leg: the model answers after the closed thought
            assert request.messages[-1]["role"] == "assistant"
            return "The capital of France is Paris."
        return SCRIPT

    upstream = FakeUpstream(script, interval=0.001)
    generation, events = run(upstream, client_stream=stream, budget=ThinkingBudget(6))
    first, second = upstream.requests
    assert first.stream and upstream.cancelled == [first]  # leg 1 was cut: cancelled upstream
    assert second.continue_final and second.stream == stream
    prefix = second.messages[-1]["content"]
    reasoning = joined(events, "reasoning")
    assert prefix == f"<think>\n{reasoning}\n</think>\n\n"
    assert THOUGHT.startswith(reasoning) and 0 < len(reasoning) < len(THOUGHT)
    assert joined(events, "content") == "The capital of France is Paris."
    o = generation.outcome
    answer_tokens = len(TOKENIZER.encode("The capital of France is Paris.", add_special_tokens=False).ids)
    assert o.budget_exhausted and o.reasoning_tokens == 6
    assert o.completion_tokens == 6 + answer_tokens and o.finish_reason == "stop"
    assert joined(events, "text").endswith("\n</think>\n\nThe capital of France is Paris.")


def test_a_second_end_of_thought_after_the_budget_stays_out_of_content():
    upstream = FakeUpstream(lambda r: "still thinking.\n</think>\n\nParis." if r.continue_final else SCRIPT)
    _, events = run(upstream, client_stream=True, budget=ThinkingBudget(5))
    assert "</think>" not in joined(events, "content") and joined(events, "content").endswith("Paris.")


def test_budget_not_reached_is_one_leg_and_zero_skips_the_thought():
    upstream = FakeUpstream()
    generation, events = run(upstream, client_stream=True, budget=ThinkingBudget(500))
    assert len(upstream.requests) == 1 and not generation.outcome.budget_exhausted
    upstream = FakeUpstream(lambda r: "Paris." if r.continue_final else SCRIPT)
    generation, events = run(upstream, client_stream=True, budget=ThinkingBudget(0))
    assert len(upstream.requests) == 1 and upstream.requests[0].continue_final
    assert upstream.requests[0].messages[-1]["content"] == "<think>\n\n</think>\n\n"
    assert joined(events, "reasoning") == "" and joined(events, "content") == "Paris."
    assert generation.outcome.reasoning_tokens == 0 and generation.outcome.budget_exhausted


def test_budget_leaves_room_for_the_answer_within_max_tokens():
    upstream = FakeUpstream(lambda r: "The capital of France is Paris." if r.continue_final else SCRIPT)
    generation, events = run(upstream, client_stream=True, budget=ThinkingBudget(10), max_tokens=14)
    assert upstream.requests[1].max_tokens == 4  # 14 - 10 spent thinking
    assert generation.outcome.completion_tokens == 14 and generation.outcome.finish_reason == "length"
    upstream = FakeUpstream()
    generation, _ = run(upstream, client_stream=True, budget=ThinkingBudget(10), max_tokens=10)
    assert len(upstream.requests) == 1 and generation.outcome.finish_reason == "length"


def test_budget_ignored_with_reasoning_off():
    upstream = FakeUpstream(lambda r: "Paris.")
    generation, _ = run(upstream, mode="off", client_stream=False, budget=ThinkingBudget(1))
    assert len(upstream.requests) == 1 and not generation.outcome.budget_exhausted


@pytest.mark.parametrize("stream", [True, False])
def test_stop_string_cuts_and_cancels(stream):
    upstream = FakeUpstream(lambda r: "One. Two. Three. Four. Five. Six.", interval=0.001)
    generation, events = run(upstream, mode="off", client_stream=stream, stop=["Three"])
    assert joined(events, "content") == joined(events, "text") == "One. Two. "
    assert generation.outcome.finish_reason == "stop"
    assert upstream.requests[0].stop_words == ["Three"]  # also sent to Triton (stops on the GPU)
    if stream:
        assert upstream.cancelled == upstream.requests


@pytest.mark.parametrize("stream", [True, False])
def test_length_finish_reason(stream):
    upstream = FakeUpstream(lambda r: "word " * 50, default_max_tokens=20)
    generation, _ = run(upstream, mode="off", client_stream=stream, max_tokens=5)
    assert generation.outcome.completion_tokens == 5 and generation.outcome.finish_reason == "length"
    generation, _ = run(upstream, mode="off", client_stream=stream)  # the deployment's default cap
    assert generation.outcome.completion_tokens == 20 and generation.outcome.finish_reason == "length"


WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.mark.parametrize("stream", [True, False])
def test_forced_tool_call_starts_the_turn(stream):
    def script(request):
        assert request.continue_final and request.messages[-1] == {"role": "assistant",
                                                                    "content": "<TOOLCALL>[get_weather("}
        return 'city="Paris")]</TOOLCALL>'

    upstream = FakeUpstream(script)
    request = UpstreamRequest(messages=[{"role": "user", "content": "weather?"}], reasoning="off")
    generation, events = run(upstream, request=request, mode="off", client_stream=stream,
                             tools=ToolPlan(parse=True, prefill="<TOOLCALL>[get_weather(", only="get_weather",
                                            parallel=False),
                             validators={"get_weather": jsonschema.Draft202012Validator(WEATHER)})
    calls = [c for e in events for c in e.calls]
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", '{"city": "Paris"}')]
    assert joined(events, "content") == "" and generation.outcome.finish_reason == "tool_calls"


def test_log_probs_per_token():
    upstream = FakeUpstream(lambda r: "Paris is big.", log_probs=True)
    request = UpstreamRequest(messages=[{"role": "user", "content": "x"}], reasoning="off", return_log_probs=True)
    _, events = run(upstream, request=request, mode="off", client_stream=True, logprobs=True)
    entries = [lp for e in events for lp in e.logprobs]
    assert "".join(t for t, _ in entries) == "Paris is big." and all(v == -0.25 for _, v in entries)


def test_upstream_is_told_the_mode_and_messages():
    upstream = FakeUpstream()
    run(upstream, client_stream=True)
    sent = upstream.requests[0]
    assert sent.reasoning == "on" and last_user(sent).startswith("SCRIPT:")


TOOLS = '[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]'


def stock_requests():
    """Chats whose prompt lengths differ: a client system message, tools, a continued turn."""
    return [
        UpstreamRequest(messages=[{"role": "user", "content": "SCRIPT:Paris."}], reasoning="off"),
        UpstreamRequest(messages=[{"role": "system", "content": "Answer briefly."},
                                  {"role": "user", "content": "SCRIPT:Paris, 東京 🙂"}], reasoning="on"),
        UpstreamRequest(messages=[{"role": "user", "content": "SCRIPT:Paris."}], reasoning="off", tools=TOOLS),
        UpstreamRequest(messages=[{"role": "user", "content": "SCRIPT:Paris."},
                                  {"role": "assistant", "content": "<think>\nhm"}], reasoning="on",
                        continue_final=True),
    ]


def preprocessed_length(upstream: StockLayoutUpstream, request: UpstreamRequest) -> int:
    fields = RequestFields(messages=request.messages, reasoning=request.reasoning, tools=request.tools,
                           continue_final=request.continue_final)
    return upstream.preprocessor().prepare(fields).input_len


@pytest.mark.parametrize("stream", [True, False])
def test_prompt_length_counted_here_once_preprocessing_agreed(stream):
    """Stock layout: the first prompt length is asked of preprocessing and checked against the
    gateway's own count; later ones are counted here only (no second preprocessing run in Triton)."""
    upstream = StockLayoutUpstream()
    counter = PromptCounter.for_deployment(TOKENIZER, load_serving_facts(), deployment(upstream))
    assert counter is not None and not counter.trusted
    for i, request in enumerate(stock_requests()):
        generation, _ = run(upstream, counter=counter, request=request, mode=request.reasoning,
                            client_stream=stream)
        assert generation.outcome.prompt_tokens == preprocessed_length(upstream, request) > 0, i
        assert counter.trusted and upstream.asked == 1


def test_prompt_length_from_preprocessing_when_the_counts_disagree():
    upstream = StockLayoutUpstream(skew=3)
    counter = PromptCounter.for_deployment(TOKENIZER, load_serving_facts(), deployment(upstream))
    answers = []
    for request in stock_requests():
        generation, _ = run(upstream, counter=counter, request=request, mode=request.reasoning, client_stream=True)
        answers.append(generation.outcome.prompt_tokens)
    assert upstream.asked == 4 and counter is not None and not counter.enabled and not counter.trusted
    assert answers == [preprocessed_length(upstream, r) + 3 for r in stock_requests()]


def test_no_prompt_counter_where_the_stream_has_the_length_or_no_tokenizer():
    facts = load_serving_facts()
    assert PromptCounter.for_deployment(TOKENIZER, facts, deployment(FakeUpstream())) is None
    assert PromptCounter.for_deployment(None, facts, deployment(StockLayoutUpstream())) is None


def test_infer_request_is_byte_identical_to_tritonclients():
    """The gateway builds its gRPC requests itself (no numpy per request): the bytes must be what
    tritonclient's InferInput path sends for the same tensors, every datatype included."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.grpc._utils import _get_inference_request

    from nemo_trt.serve.openai.upstream import UpstreamRequest

    request = UpstreamRequest(
        messages=[{"role": "user", "content": "héllo ✓"}], reasoning="on", tools='[{"type": "function"}]',
        continue_final=True, max_tokens=17, stream=False, temperature=0.6, top_p=0.95, top_k=3, seed=2**64 - 1,
        presence_penalty=0.5, frequency_penalty=-0.3, repetition_penalty=1.1, min_tokens=2,
        stop_words=["</x>", "ü"], return_log_probs=True, request_id="req-1")
    numpy_types = {"BYTES": object, "BOOL": bool, "INT32": np.int32, "FP32": np.float32, "UINT64": np.uint64}
    inputs = []
    for name, datatype, values in request.tensors():
        value = np.array([[v.encode() if datatype == "BYTES" else v for v in values]], dtype=numpy_types[datatype])
        tensor = grpcclient.InferInput(name, list(value.shape), datatype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    assert {name for name, _, _ in request.tensors()} == {
        "messages", "stream", "reasoning", "tools", "continue_final", "max_tokens", "temperature", "top_p",
        "presence_penalty", "frequency_penalty", "repetition_penalty", "top_k", "min_tokens", "seed",
        "stop_words", "return_log_probs"}
    outputs = [grpcclient.InferRequestedOutput(n) for n in ("output_ids", "sequence_length")]
    expected = _get_inference_request("ensemble_tokens", inputs, "", "req-1", outputs, 0, False, False, 0, None, None)
    built = request.infer_request("ensemble_tokens", ["output_ids", "sequence_length"])
    assert built.SerializeToString() == expected.SerializeToString()
