"""Thinking budget (`max_thinking_tokens`, top level or under `nvext` as NIM names it).

The model writes `<think>\\n…\\n</think>\\n\\n` before its answer. When the thought has used
the budget and is still open, the gateway cancels the generation, and starts it again with
the assistant turn opened for the model as `<think>\\n{reasoning so far}\\n</think>\\n\\n`
(the ensemble's `continue_final`): the thought is closed the way the model closes it, so it
goes on with the answer. Streamed clients see the reasoning stop and the answer follow. The
budget counts generated tokens from the start of the turn (`<think>` included), like NIM's
budget processor; `usage.completion_tokens_details.reasoning_tokens` reports them.

NIM and TensorRT-LLM force `</think>` with a logits processor inside the engine; the
tensorrt_llm backend takes no such processor through Triton, so a second, short prefill
(prompt + reasoning) is the cost here, and only for requests that hit their budget.
"""
from __future__ import annotations

from dataclasses import dataclass

from nemo_trt.serve.reasoning import ReasoningSplitter, Split


@dataclass(frozen=True)
class ThinkingBudget:
    tokens: int
    open_tag: str = "<think>"
    close_tag: str = "</think>"

    def exhausted(self, reasoning_tokens: int, still_reasoning: bool) -> bool:
        return still_reasoning and reasoning_tokens >= self.tokens

    def prefix(self, reasoning: str) -> str:
        """The assistant text the model continues from: the closed thought."""
        return f"{self.open_tag}\n{reasoning}\n{self.close_tag}\n\n"

    def close(self, splitter: ReasoningSplitter) -> Split:
        """Move a splitter that is inside the thought past its end (what it still held)."""
        split = Split()
        if splitter.state == "start":
            split = split + splitter.feed(self.open_tag + "\n")
        return split + splitter.feed("\n" + self.close_tag + "\n\n")
