"""Stop strings on a text stream: cut before the first match, hold back possible prefixes.

The ensemble also gets them as `stop_words` so generation ends on the GPU, but a stop
string can be tokenized differently inside the generated text than alone, and the
backend returns multi-token stop sequences as part of the output (TensorRT-LLM). OpenAI's
contract is text: the returned text never contains the stop string. So the gateway
matches on text too. Feeding a text in any chunking gives the same result.
"""
from __future__ import annotations

from collections.abc import Sequence


def held_suffix(text: str, tags: Sequence[str]) -> int:
    """Length of the longest end of `text` that could still grow into one of `tags`."""
    for n in range(min(max((len(t) for t in tags), default=1) - 1, len(text)), 0, -1):
        tail = text[-n:]
        if any(t.startswith(tail) for t in tags):
            return n
    return 0


class StopMatcher:
    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self._held = ""
        self.stopped: str | None = None  # the stop string that matched

    def feed(self, text: str) -> str:
        """Text that is safe to emit; after a match, nothing more (see `stopped`)."""
        if self.stopped is not None:
            return ""
        if not self.stops:
            return text
        buf = self._held + text
        cut = -1
        for stop in self.stops:
            index = buf.find(stop)
            if index >= 0 and (cut < 0 or index < cut):
                cut, self.stopped = index, stop
        if cut >= 0:
            self._held = ""
            return buf[:cut]
        keep = held_suffix(buf, self.stops)
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[: len(buf) - keep]

    def finish(self) -> str:
        held, self._held = self._held, ""
        return "" if self.stopped is not None else held
