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
"""
from __future__ import annotations

from dataclasses import dataclass, field

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
