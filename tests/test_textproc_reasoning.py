"""Streaming reasoning splitter: every split point of every case gives the one-chunk result."""
from __future__ import annotations

import random

import pytest

from nemo_trt.serve.reasoning import ReasoningSplitter, Split, split_text

CASES = {
    # text -> (reasoning, answer)
    "<think>\nstep 1\nstep 2\n</think>\n\nThe answer.": ("step 1\nstep 2", "The answer."),
    "<think></think>\n\nShort answer": ("", "Short answer"),
    "<think>\n\n</think>\n\nA": ("", "A"),
    "Plain answer, reasoning off.": ("", "Plain answer, reasoning off."),
    "  \n<think>x</think>y": ("x", "y"),
    "<think>\nunfinished reasoning, cut by the length limit": ("unfinished reasoning, cut by the length limit", ""),
    "<think>\nends on a partial tag </thi": ("ends on a partial tag </thi", ""),
    "<thi": ("", "<thi"),
    "<thinking> is not a tag": ("", "<thinking> is not a tag"),
    "answer with <think>tags</think> inside": ("", "answer with <think>tags</think> inside"),
    "<think>a < b and c </ d </think>\n\n答え 🙂": ("a < b and c </ d", "答え 🙂"),
    "<think>first</think>\n\nanswer <think>again</think> kept": ("first", "answer <think>again</think> kept"),
    "": ("", ""),
    "\n\n": ("", ""),
}


def _stream(chunks: list[str]) -> Split:
    splitter = ReasoningSplitter()
    result = Split()
    for chunk in chunks:
        result = result + splitter.feed(chunk)
    return result + splitter.finish()


@pytest.mark.parametrize("text", list(CASES))
def test_one_chunk(text):
    assert split_text(text) == Split(*CASES[text])


@pytest.mark.parametrize("text", list(CASES))
def test_every_two_way_split_point(text):
    expected = Split(*CASES[text])
    for i in range(len(text) + 1):
        assert _stream([text[:i], text[i:]]) == expected, i


@pytest.mark.parametrize("text", list(CASES))
def test_char_by_char_and_random_chunks(text):
    expected = Split(*CASES[text])
    assert _stream(list(text)) == expected
    rng = random.Random(len(text))
    for _ in range(50):
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 6))))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        assert _stream(chunks) == expected, chunks


def test_partial_tag_is_held_then_released():
    splitter = ReasoningSplitter()
    assert splitter.feed("<think>\nabc </") == Split("abc", "")
    assert splitter.feed("b> d") == Split(" </b> d", "")  # not a close tag after all
    assert splitter.feed("</th") == Split()
    assert splitter.feed("ink>\n\nok") == Split("", "ok")
    assert splitter.state == "answer"
