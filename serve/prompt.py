"""Render the Super-49B v1 chat template straight to token ids.

Rendering the template to a string and tokenizing it would let a user who types
`<|eot_id|>` end their own turn and forge a system or assistant turn. Here the
special tokens of the template are inserted as ids and every piece of text (user,
assistant, system) is encoded with special-token parsing disabled, so user text can
only ever become plain-text tokens. For ordinary text the ids are identical to
tokenizing the rendering of serving.yaml's `chat_template` (tests check that).

Template rules (model-nemotron-super-49b-v1.md §9): single BOS; the system turn is
exactly `detailed thinking on|off`; each turn is `<|start_header_id|>{role}
<|end_header_id|>\\n\\n{content|trim}<|eot_id|>`; assistant history keeps only the
text after the last `</think>`; the prompt ends with the assistant header.
A client's own system message is not allowed to replace the reasoning switch: the
model card says all instructions belong in the user turn, so it is prepended to the
first user message (blank line between). A system message that *is* a reasoning
switch (`detailed thinking off`, as the model card's examples send) selects the mode.

Tools (serving.yaml `tools`, model card §12): the card's tool instructions and the
`<AVAILABLE_TOOLS>` list go into the first user turn, and a request with tools runs
with reasoning off unless it asks otherwise (that is how the card evaluates tool use).
An assistant turn that called tools is written back as `<TOOLCALL>[f(a=1)]</TOOLCALL>`
(pythonic, as the model writes it); a tool result is a turn of its own with the role
`tool`. `continue_final`: the last message is an assistant message to be continued
(rendered as is, no `</think>` stripping, no end of turn) — how a reasoning budget
closes the thought and lets the model answer.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from nemo_trt.model_facts import DEFAULT_MODEL, Reasoning, ServingFacts, ToolFacts, load_serving_facts
from nemo_trt.serve.toolcall import ToolCall, ToolSpec, ToolSpecError, format_calls, parse_call_list

ROLES = ("system", "user", "assistant", "tool")
BOS = "<|begin_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"


class PromptError(ValueError):
    """The request's prompt is malformed; the message is shown to the client as is."""


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # assistant turns that called tools


@dataclass(frozen=True)
class RenderedPrompt:
    ids: list[int]
    reasoning: Reasoning  # the mode the system turn selects


def decode_utf8(raw: bytes | str, what: str) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PromptError(f"{what} is not valid UTF-8 (byte {exc.start}): send UTF-8 text") from None


def parse_messages(raw: bytes | str | list, continue_final: bool = False) -> list[ChatMessage]:
    """Validate a chat as sent in the `messages` input: a JSON list of {role, content}.

    Roles: system (first only), user, assistant (with optional OpenAI `tool_calls`, then
    `content` may be null), tool (a tool result). The chat must end with a user or tool
    message — or with an assistant message when `continue_final` asks to continue it.
    """
    if isinstance(raw, (bytes, str)):
        text = decode_utf8(raw, "messages")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PromptError(f"messages is not valid JSON ({exc.msg} at char {exc.pos}): "
                              'send a JSON list like [{"role": "user", "content": "Hi"}]') from None
    else:
        data = raw
    if not isinstance(data, list):
        raise PromptError(f"messages must be a JSON list of {{role, content}} objects, got {type(data).__name__}")
    if not data:
        raise PromptError("messages is an empty list: send at least one user message")
    messages = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise PromptError(f"messages[{i}] must be an object with role and content, got {type(item).__name__}")
        role, content = item.get("role"), item.get("content")
        if role not in ROLES:
            raise PromptError(f"messages[{i}].role {role!r} is not one of {', '.join(ROLES)}")
        calls: tuple[ToolCall, ...] = ()
        if item.get("tool_calls"):
            if role != "assistant":
                raise PromptError(f"messages[{i}] has tool_calls: only assistant messages call tools")
            try:
                calls = tuple(parse_call_list(item["tool_calls"], f"messages[{i}].tool_calls"))
            except ToolSpecError as exc:
                raise PromptError(str(exc)) from None
            if content is None:
                content = ""
        if not isinstance(content, str):
            raise PromptError(f"messages[{i}].content must be a string, got {type(content).__name__}")
        if role == "system" and i != 0:
            raise PromptError(f"messages[{i}] is a system message: only the first message may be a system message")
        messages.append(ChatMessage(role, content, calls))
    if not any(m.role == "user" for m in messages):
        raise PromptError("messages has no user message: send at least one")
    last = messages[-1].role
    if continue_final:
        if last != "assistant":
            raise PromptError(f"continuing the final message needs an assistant message last, got {last!r}")
    elif last not in ("user", "tool"):
        raise PromptError(f"the last message must be a user (or tool) message, got {last!r}")
    return messages


def parse_reasoning(value: bytes | str | None, default: Reasoning | None) -> Reasoning | None:
    if value is None:
        return default
    text = decode_utf8(value, "reasoning").strip().lower()
    if text == "":
        return default
    aliases: dict[str, Reasoning] = {"on": "on", "off": "off", "true": "on", "false": "off", "1": "on", "0": "off"}
    if text not in aliases:
        raise PromptError(f"reasoning must be 'on' or 'off', got {text!r}")
    return aliases[text]


class PromptRenderer:
    """Chat → ids for one tokenizer; safe to share across requests (no per-call state)."""

    def __init__(self, tokenizer: Tokenizer, facts: ServingFacts):
        # A private copy: the flag below must not leak into other users of the tokenizer.
        self._tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer.encode_special_tokens = True
        self.facts = facts
        self._special = {}
        for token in (BOS, START_HEADER, END_HEADER, EOT):
            token_id = self._tokenizer.token_to_id(token)
            if token_id is None:
                raise ValueError(f"the tokenizer has no {token} token: it is not a Llama-3 tokenizer")
            self._special[token] = token_id
        self._switches = {prompt.strip(): mode for mode, prompt in facts.reasoning.system_prompts.items()}
        # Per-request work is on every request's latency: the pieces that never change
        # (role headers, the system turn of each mode, the assistant prefix) are encoded once.
        self._headers = {role: [self._special[START_HEADER]] + self.encode_text(role) + [self._special[END_HEADER]]
                         for role in ROLES}
        self._assistant_prefix = self._headers["assistant"] + self.encode_text("\n\n")
        self._system_turns: dict[Reasoning, list[int]] = {}

    @classmethod
    def from_dir(cls, tokenizer_dir: str | Path, facts: ServingFacts | None = None) -> PromptRenderer:
        tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
        return cls(tokenizer, facts or load_serving_facts(DEFAULT_MODEL))

    def encode_text(self, text: str) -> list[int]:
        """Plain text → ids; `<|eot_id|>` typed by a user stays text."""
        if not text:
            return []
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def _turn(self, role: str, content: str) -> list[int]:
        header = self._headers.get(role)
        if header is None:
            header = [self._special[START_HEADER]] + self.encode_text(role) + [self._special[END_HEADER]]
        return header + self.encode_text("\n\n" + content) + [self._special[EOT]]

    def _system_turn(self, mode: Reasoning) -> list[int]:
        turn = self._system_turns.get(mode)
        if turn is None:
            turn = self._system_turns[mode] = self._turn("system", self.facts.system_prompt(mode))
        return turn

    def tool_block(self, tools: list[ToolSpec]) -> str:
        """The card's tool instructions and `<AVAILABLE_TOOLS>` list, to open a user turn."""
        facts = self._tool_facts()
        functions = json.dumps([t.as_prompt_json() for t in tools], ensure_ascii=False)
        return facts.instructions + "\n\n" + facts.available.replace("{functions}", functions)

    def _tool_facts(self) -> ToolFacts:
        if self.facts.tools is None:
            raise PromptError(f"{self.facts.name} has no tool-calling format in its serving facts")
        return self.facts.tools

    def _content(self, message: ChatMessage) -> str:
        content = message.content
        if message.role == "assistant" and self.facts.reasoning.close_tag in content:
            content = content.split(self.facts.reasoning.close_tag)[-1]
        content = content.strip()
        if message.tool_calls:
            facts = self._tool_facts()
            calls = format_calls(list(message.tool_calls), facts.call_open, facts.call_close)
            content = f"{content}\n{calls}" if content else calls
        return content

    def render(self, messages: list[ChatMessage], reasoning: Reasoning | None = None,
               default: Reasoning | None = None, tools: list[ToolSpec] | None = None,
               continue_final: bool = False) -> RenderedPrompt:
        """`reasoning` None: a system-message switch, else (with tools: the tool default,
        else) `default`, else the model's default decides."""
        messages = list(messages)
        client_system = None
        if messages and messages[0].role == "system":
            text = messages.pop(0).content.strip()
            if text in self._switches:
                if reasoning is None:
                    reasoning = self._switches[text]
            elif text:
                client_system = text
        if not messages:
            raise PromptError("the chat has no user message")
        if continue_final:
            if messages[-1].role != "assistant":
                raise PromptError("continuing the final message needs an assistant message last")
        elif messages[-1].role not in ("user", "tool"):
            raise PromptError("the last message must be a user (or tool) message")
        if tools:
            default = self._tool_facts().default_reasoning
        mode = reasoning or default or self.facts.reasoning.default
        if client_system is not None or tools:
            first_user = next((i for i, m in enumerate(messages) if m.role == "user"), None)
            if first_user is None:
                raise PromptError("the chat has no user message to hold the instructions")
            # The card's layout: instructions, then (the tool list and) the user prompt.
            head = f"{client_system}\n\n" if client_system is not None else ""
            tool_block = self.tool_block(tools) if tools else ""
            messages[first_user] = ChatMessage("user", head + tool_block + messages[first_user].content)
        ids = [self._special[BOS]] + self._system_turn(mode)
        last = len(messages) - 1
        for i, message in enumerate(messages):
            if continue_final and i == last:
                # Continued as is: the partial assistant text the model goes on from.
                ids += self._assistant_prefix + self.encode_text(message.content)
                return RenderedPrompt(ids, mode)
            role = message.role
            if role == "tool" and self.facts.tools is not None:
                role = self.facts.tools.result_role
            ids += self._turn(role, self._content(message))
        ids += self._assistant_prefix
        return RenderedPrompt(ids, mode)

    def render_text(self, text: str, reasoning: Reasoning | None = None,
                    default: Reasoning | None = None) -> RenderedPrompt:
        return self.render([ChatMessage("user", text)], reasoning, default)
