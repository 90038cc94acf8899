"""Incremental detokenization: token ids in, text deltas out, O(1) work per token.

Decoding each streamed token on its own (what the stock TensorRT-LLM postprocessing
does) loses spaces and breaks multi-byte characters (triton-trtllm-repository.md §5,
§12 #5). `tokenizers.decoders.DecodeStream` keeps a small window of ids and only
emits text once it is valid UTF-8. What it never emits by itself is a tail that stays
incomplete at the end of generation (a multi-byte character cut by the length
limit); `finish()` flushes that tail exactly as a full `decode()` would render it,
so the concatenated deltas always equal `tokenizer.decode(all_ids)`.
"""
from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

# Ids decoded before the pending ones when flushing, so that decoders which treat
# the first token specially (SentencePiece's leading space) render the tail as they
# would in the middle of the text. A handful is plenty; it bounds the flush cost.
_CONTEXT = 4


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        self._context: list[int] = []  # last ids already rendered as text
        self._pending: list[int] = []  # ids fed since the last emitted text
        self.num_tokens = 0

    def add(self, token_id: int) -> str:
        """Feed one id; return the text it completes ('' while a character is incomplete)."""
        self.num_tokens += 1
        chunk = self._stream.step(self._tokenizer, int(token_id))
        if chunk is None:
            self._pending.append(int(token_id))
            return ""
        self._context = (self._context + self._pending + [int(token_id)])[-_CONTEXT:]
        self._pending = []
        return chunk

    def add_many(self, token_ids: Iterable[int]) -> str:
        return "".join(self.add(t) for t in token_ids)

    def add_all(self, token_ids: list[int]) -> str:
        """The text of every id of a generation at once (a non-streamed answer): add_many() then
        finish(), in one `decode` where nothing was fed before (a step per token costs ~1 µs)."""
        if self.num_tokens:
            return self.add_many(token_ids) + self.finish()
        self.num_tokens = len(token_ids)
        self._context = list(token_ids[-_CONTEXT:])
        return self._tokenizer.decode(token_ids, skip_special_tokens=self._skip)

    def finish(self) -> str:
        """Text of ids still held back (an incomplete character at the very end)."""
        if not self._pending:
            return ""
        before = self._tokenizer.decode(self._context, skip_special_tokens=self._skip)
        full = self._tokenizer.decode(self._context + self._pending, skip_special_tokens=self._skip)
        self._context = (self._context + self._pending)[-_CONTEXT:]
        self._pending = []
        self._stream = DecodeStream(skip_special_tokens=self._skip)
        return full[len(before):] if full.startswith(before) else full
