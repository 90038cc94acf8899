"""What the `postprocessing` model does with each response of `tensorrt_llm`.

In streaming, the ensemble sends every response of the decoupled `tensorrt_llm` step
to postprocessing as a separate request (cpu-triton.md §6.1). Correct deltas (spaces,
multi-byte characters, a `</think>` split over tokens) need state that lives across
those calls: an incremental detokenizer and a reasoning splitter per request. The
state is keyed by the request key preprocessing generated (clients' request ids are
not unique), dropped when the request's end is seen, and bounded by an LRU cap and
an idle TTL so that requests whose end is never seen (cancelled) cannot pile up.

End of a request, seen from here: a response with no tokens, a stop/end token, or
the output budget used up; a non-streaming request is always one response.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tokenizers import Tokenizer

from nemo_trt.serve.detokenize import IncrementalDetokenizer
from nemo_trt.serve.reasoning import ReasoningSplitter, Split


@dataclass
class _State:
    detokenizer: IncrementalDetokenizer
    splitter: ReasoningSplitter
    last_used: float
    num_tokens: int = 0


@dataclass(frozen=True)
class PostOutput:
    text: str  # all generated text of this response (tags included)
    reasoning: str
    answer: str
    token_ids: list[int] = field(default_factory=list)
    num_output_tokens: int = 0  # cumulative for the request
    final: bool = False


class Postprocessor:
    def __init__(self, tokenizer: Tokenizer, stop_ids: Iterable[int], *, max_states: int = 4096,
                 ttl_s: float = 600.0, clock: Callable[[], float] = time.monotonic):
        self._tokenizer = tokenizer
        self._stop_ids = frozenset(int(i) for i in stop_ids)
        self._states: OrderedDict[int, _State] = OrderedDict()
        self.max_states = max_states
        self.ttl_s = ttl_s
        self._clock = clock

    def __len__(self) -> int:
        return len(self._states)

    def _new_state(self, now: float) -> _State:
        return _State(IncrementalDetokenizer(self._tokenizer), ReasoningSplitter(), now)

    def _evict(self, now: float) -> None:
        while self._states:
            key, state = next(iter(self._states.items()))
            if len(self._states) > self.max_states or now - state.last_used > self.ttl_s:
                del self._states[key]
            else:
                break

    def process(self, key: int | None, tokens: list[int], *, stream: bool = True,
                max_output_len: int | None = None, end_id: int | None = None) -> PostOutput:
        now = self._clock()
        tokens = [int(t) for t in tokens]
        if not stream or key is None:
            state, final = self._new_state(now), True
            self._states.pop(key, None)
        else:
            state = self._states.pop(key, None) or self._new_state(now)
            stops = self._stop_ids | ({int(end_id)} if end_id is not None else set())
            final = (not tokens or any(t in stops for t in tokens)
                     or (max_output_len is not None and state.num_tokens + len(tokens) >= max_output_len))
        state.num_tokens += len(tokens)
        state.last_used = now
        text = state.detokenizer.add_many(tokens)
        split = state.splitter.feed(text)
        if final:
            tail = state.detokenizer.finish()
            text += tail
            split = split + state.splitter.feed(tail) + state.splitter.finish()
        else:
            self._states[key] = state  # most recently used at the end
        self._evict(now)
        return PostOutput(text, split.reasoning, split.answer, tokens, state.num_tokens, final)


__all__ = ["PostOutput", "Postprocessor", "Split"]
