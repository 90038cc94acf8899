"""Token ids of one generation in, text out: incremental detokenization + reasoning split.

One `TextStream` per generation. In streaming, each response of the decoupled
`tensorrt_llm` step carries only the new token(s); correct deltas (spaces, multi-byte
characters, a `</think>` split over tokens) need state that lives for the whole stream.

The ensemble is the stock TensorRT-LLM layout (preprocessing -> tensorrt_llm ->
postprocessing), so the `postprocessing` step sees one request per token response.
Triton gives that step no identity of its own (its request id, correlation id and
parameters are the client's, which need not be unique, and an
ensemble step behind a decoupled model may only read tensors that model produced), so
the stream is identified by what the backend itself returns: `arrival_time_ns`, the
executor's per-request arrival time, which preprocessing makes every request return
(`return_perf_metrics`), together with the request id. `StreamTable` keeps one
TextStream per such key.

Nothing marks the last response of a stream on that path (the backend's final flag does
not reach the next ensemble step), so text is never held back for an end that cannot
be seen: a trailing incomplete character or a `<think>`/`</think>` fragment cut by the
length limit is left out, streamed and non-streamed alike (`TextStream.feed`; the two
always agree). Streams leave the table least-recently-used first once it holds
`capacity` of them.

`decode_sequences` is the stateless counterpart for whole sequences (the stock
`postprocessing` contract, for clients and BLS pipelines that call it directly).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np
from tokenizers import Tokenizer

from nemo_trt.serve.detokenize import IncrementalDetokenizer
from nemo_trt.serve.reasoning import ReasoningSplitter


@dataclass(frozen=True)
class TextDelta:
    text: str  # all generated text of this step (tags included): stock `text_output`
    reasoning: str
    answer: str
    token_ids: list[int] = field(default_factory=list)
    num_output_tokens: int = 0  # cumulative for the request


class TextStream:
    def __init__(self, tokenizer: Tokenizer):
        self._detokenizer = IncrementalDetokenizer(tokenizer)
        self._splitter = ReasoningSplitter()
        self.num_tokens = 0
        self.finished = False

    def feed(self, tokens: list[int]) -> TextDelta:
        tokens = [int(t) for t in tokens]
        self.num_tokens += len(tokens)
        text = self._detokenizer.add_many(tokens)
        split = self._splitter.feed(text)
        return TextDelta(text, split.reasoning, split.answer, tokens, self.num_tokens)

    def finish(self) -> TextDelta:
        """End of generation: text held back (an incomplete character, a possible tag)."""
        self.finished = True
        tail = self._detokenizer.finish()
        split = self._splitter.feed(tail) + self._splitter.finish()
        return TextDelta(tail, split.reasoning, split.answer, [], self.num_tokens)

    def feed_all(self, tokens: list[int]) -> TextDelta:
        """Non-streaming: a whole generation at once."""
        first, last = self.feed(tokens), self.finish()
        return TextDelta(first.text + last.text, first.reasoning + last.reasoning, first.answer + last.answer,
                         first.token_ids, self.num_tokens)


DEFAULT_STREAM_CAPACITY = 4096


class StreamTable:
    """TextStreams by stream key, at most `capacity` of them (least recently fed leave first).

    A stream is only dropped while still running if `capacity` other streams were fed
    after its last token; keep `capacity` well above the number of concurrent streams
    (the engine's max batch size) and the requests that can start during one decode step.
    """

    def __init__(self, tokenizer: Tokenizer, capacity: int = DEFAULT_STREAM_CAPACITY):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._tokenizer = tokenizer
        self._capacity = capacity
        self._streams: OrderedDict[Hashable, TextStream] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._streams)

    def feed(self, key: Hashable, tokens: list[int]) -> TextDelta:
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = TextStream(self._tokenizer)
            if len(self._streams) > self._capacity:
                self._streams.popitem(last=False)
                self.evicted += 1
        else:
            self._streams.move_to_end(key)
        return stream.feed(tokens)


class SequenceError(ValueError):
    """TOKENS_BATCH / SEQUENCE_LENGTH that do not describe a batch of sequences."""


def decode_sequences(tokenizer: Tokenizer, tokens_batch: np.ndarray, sequence_lengths: np.ndarray) -> list[TextDelta]:
    """The stock `postprocessing` contract: whole sequences in, one TextDelta per sequence.

    `tokens_batch` is [batch, beams, tokens] (tensorrt_llm's `output_ids`), `sequence_lengths`
    [batch, beams]; each sequence is `tokens[:length]`, decoded with special tokens skipped,
    in batch-major, beam-minor order (batch·beams results), as the stock model does
    (tensorrtllm_backend all_models/inflight_batcher_llm/postprocessing/1/model.py). Each
    is decoded whole, so it is only right for whole sequences: streamed chunks need the
    per-stream state of a TextStream (StreamTable).
    """
    tokens_batch = np.asarray(tokens_batch)
    sequence_lengths = np.asarray(sequence_lengths)
    if tokens_batch.ndim == 2:  # [batch, tokens]: one beam
        tokens_batch = tokens_batch[:, np.newaxis, :]
    if sequence_lengths.ndim == 1:
        sequence_lengths = sequence_lengths[:, np.newaxis]
    if tokens_batch.ndim != 3 or sequence_lengths.shape != tokens_batch.shape[:2]:
        raise SequenceError(f"TOKENS_BATCH shape {list(tokens_batch.shape)} and SEQUENCE_LENGTH shape "
                            f"{list(sequence_lengths.shape)} do not match: expected [batch, beams, tokens] "
                            "and [batch, beams]")
    width = tokens_batch.shape[2]
    if sequence_lengths.size and (sequence_lengths.min() < 0 or sequence_lengths.max() > width):
        raise SequenceError(f"SEQUENCE_LENGTH must be between 0 and the {width} tokens sent, "
                            f"got {sequence_lengths.reshape(-1).tolist()}")
    return [TextStream(tokenizer).feed_all(beam[:int(length)].tolist())
            for item, lengths in zip(tokens_batch, sequence_lengths)
            for beam, length in zip(item, lengths)]
