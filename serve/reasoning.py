"""Split generated text into reasoning and answer as it streams.

Super-49B v1 writes `<think>…</think>` before its answer when reasoning is on (and
often an empty `<think></think>` even then). The tags are plain text, not special
tokens (model card; vLLM PR #21041), so they can arrive split over several tokens or
chunks: anything that could still become a tag is held back until the next chunk
decides it. Feeding the whole text as one chunk gives the same split (non-streaming
path), which is what the tests check for every split point.
"""
from __future__ import annotations

from dataclasses import dataclass

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"


@dataclass(frozen=True)
class Split:
    reasoning: str = ""
    answer: str = ""

    def __add__(self, other: Split) -> Split:
        return Split(self.reasoning + other.reasoning, self.answer + other.answer)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ReasoningSplitter:
    """Feed text deltas; get (reasoning_delta, answer_delta) back.

    States: "start" (only whitespace or a possible `<think>` prefix seen), "reasoning"
    (inside the think block), "answer_start" (after `</think>`: leading whitespace is
    dropped), "answer". Reasoning text has the newline after `<think>` and the
    whitespace before `</think>` trimmed; the answer has no leading whitespace.
    """

    def __init__(self, open_tag: str = OPEN_TAG, close_tag: str = CLOSE_TAG):
        self.open_tag = open_tag
        self.close_tag = close_tag
        self._state = "start"
        self._held = ""  # text not yet assigned (whitespace / possible tag prefix)

    @property
    def state(self) -> str:
        return self._state

    def feed(self, text: str) -> Split:
        reasoning: list[str] = []
        answer: list[str] = []
        buf = self._held + text
        self._held = ""
        while True:
            if self._state == "start":
                stripped = buf.lstrip()
                if not stripped:
                    self._held = buf
                    break
                if stripped.startswith(self.open_tag):
                    buf = stripped[len(self.open_tag):].lstrip("\r\n")
                    self._state = "reasoning_start"
                    continue
                if self.open_tag.startswith(stripped):
                    self._held = buf
                    break
                self._state = "answer"
                answer.append(stripped)
                break
            if self._state == "reasoning_start":
                # Drop the newline(s) right after <think>, even if they come in a later chunk.
                buf = buf.lstrip("\r\n")
                if not buf:
                    break
                self._state = "reasoning"
                continue
            if self._state == "reasoning":
                index = buf.find(self.close_tag)
                if index >= 0:
                    reasoning.append(buf[:index].rstrip())
                    buf = buf[index + len(self.close_tag):]
                    self._state = "answer_start"
                    continue
                keep = _partial_suffix(buf, self.close_tag)
                body, tail = buf[: len(buf) - keep], buf[len(buf) - keep:]
                # Trailing whitespace may precede </think> (and is then dropped): hold it.
                trimmed = body.rstrip()
                reasoning.append(trimmed)
                self._held = body[len(trimmed):] + tail
                break
            if self._state == "answer_start":
                buf = buf.lstrip()
                if not buf:
                    break
                self._state = "answer"
                continue
            # answer
            answer.append(buf)
            break
        return Split("".join(reasoning), "".join(answer))

    def finish(self) -> Split:
        """End of generation: whatever is held goes where it was heading."""
        held, self._held = self._held, ""
        if self._state == "start":
            # Only whitespace or a lone tag prefix like "<thi": it is answer text.
            self._state = "answer"
            return Split(answer=held.lstrip())
        if self._state == "reasoning":
            # Stopped inside <think> (length limit): keep the partial reasoning.
            return Split(reasoning=held.rstrip())
        return Split()


def split_text(text: str) -> Split:
    """Non-streaming split of a whole generation."""
    splitter = ReasoningSplitter()
    return splitter.feed(text) + splitter.finish()
