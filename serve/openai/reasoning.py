"""Reasoning for the OpenAI API: which mode a request runs in, and its reasoning tokens.

Mode, first that applies (model-nemotron-super-49b-v1.md §9.2, anchors §5.1):
1. `chat_template_kwargs: {"thinking": true|false}` (the per-request switch);
2. a first system message that is exactly `detailed thinking on|off` (the model card's way);
3. with tools: the tool default (off, as the card evaluates tool use);
4. the deployment's default (the repository's `default_reasoning`).
The gateway sends the mode it decided to the ensemble explicitly, so the prompt and the
gateway's own decisions (budget, forced tool calls) never disagree.

The text itself is split by nemo_trt.serve.reasoning.ReasoningSplitter: `<think>` and
`</think>` are plain text spread over several tokens, so they are matched as strings.
"""
from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer

from nemo_trt.model_facts import ServingFacts
from nemo_trt.serve.openai.stops import held_suffix
from nemo_trt.serve.reasoning import ReasoningSplitter

REASONING_STATES = ("start", "reasoning_start", "reasoning")


def system_switch(facts: ServingFacts, first_message_role: str | None, first_message_text: str | None) -> str | None:
    """'on'/'off' when the first message is a system reasoning switch, else None."""
    if first_message_role not in ("system", "developer") or first_message_text is None:
        return None
    text = first_message_text.strip()
    for mode, prompt in facts.reasoning.system_prompts.items():
        if text == prompt.strip():
            return mode
    return None


def decide_mode(facts: ServingFacts, explicit: bool | None, switch: str | None, has_tools: bool,
                deployment_default: str | None) -> str:
    if explicit is not None:
        return "on" if explicit else "off"
    if switch is not None:
        return switch
    if has_tools and facts.tools is not None:
        return facts.tools.default_reasoning
    return deployment_default or facts.reasoning.default


def in_reasoning(splitter: ReasoningSplitter) -> bool:
    """Still before the end of the thought (or before knowing whether one starts)."""
    return splitter.state in REASONING_STATES


class TagScrubber:
    """Removes reasoning tags from answer text as it streams (a tag split over chunks too).

    After the thinking budget closed the thought for the model, a model may go on thinking
    and close it a second time: that `</think>` must not show up in `content`.
    """

    def __init__(self, tags: Sequence[str]):
        self.tags = [t for t in tags if t]
        self._held = ""

    def feed(self, text: str) -> str:
        buf = self._held + text
        for tag in self.tags:
            buf = buf.replace(tag, "")
        keep = held_suffix(buf, self.tags)
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[: len(buf) - keep]

    def finish(self) -> str:
        held, self._held = self._held, ""
        return held


def reasoning_token_count(tokenizer: Tokenizer, token_ids: Sequence[int], close_tag: str = "</think>",
                          open_tag: str = "<think>") -> int:
    """Tokens up to and including the one that completes `</think>` in a whole generation.

    All tokens when the thought never closes (cut by the length limit), none when the
    output does not open with `<think>`. Binary search over prefixes: O(log n) decodes.
    """
    ids = list(token_ids)
    if not ids:
        return 0
    head = tokenizer.decode(ids[: min(len(ids), 8)], skip_special_tokens=True).lstrip()
    if not (head.startswith(open_tag) or open_tag.startswith(head)):
        return 0
    full = tokenizer.decode(ids, skip_special_tokens=True)
    if not full.lstrip().startswith(open_tag):
        return 0
    if close_tag not in full:
        return len(ids)
    low, high = 1, len(ids)  # smallest k with close_tag in decode(ids[:k])
    while low < high:
        mid = (low + high) // 2
        if close_tag in tokenizer.decode(ids[:mid], skip_special_tokens=True):
            high = mid
        else:
            low = mid + 1
    return low
