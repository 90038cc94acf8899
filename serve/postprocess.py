"""Token ids of one generation in, text out: incremental detokenization + reasoning split.

One `TextStream` per request. In streaming, each response of the decoupled
`tensorrt_llm` step carries only the new token(s); correct deltas (spaces, multi-byte
characters, a `</think>` split over tokens) need state that lives for the whole
request. Triton ensembles cannot give a post-processing step that identity: a step
may not mix tensors from a decoupled model with tensors from before it ("receives
inputs originated from different decoupled models", checked at load), so a request
key from preprocessing cannot reach it, and client request ids need not be unique.
The `generate` model therefore drives `tensorrt_llm` itself (BLS) and keeps one
TextStream per request in a local variable: state and request cannot be mismatched.

`decode_sequences` is the stateless counterpart behind the stock-contract
`postprocessing` model (whole sequences in, whole texts out), for clients and BLS
pipelines written against stock TensorRT-LLM repositories.
"""
from __future__ import annotations

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


class SequenceError(ValueError):
    """TOKENS_BATCH / SEQUENCE_LENGTH that do not describe a batch of sequences."""


def decode_sequences(tokenizer: Tokenizer, tokens_batch: np.ndarray, sequence_lengths: np.ndarray) -> list[TextDelta]:
    """The stock `postprocessing` contract: whole sequences in, one TextDelta per sequence.

    `tokens_batch` is [batch, beams, tokens] (tensorrt_llm's `output_ids`), `sequence_lengths`
    [batch, beams]; each sequence is `tokens[:length]`, decoded with special tokens skipped,
    in batch-major, beam-minor order (batch·beams results), as the stock model does
    (tensorrtllm_backend all_models/inflight_batcher_llm/postprocessing/1/model.py). Each
    is decoded whole, so it is only right for whole sequences: streamed chunks need the
    per-request state of a TextStream (the `generate` model).
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
