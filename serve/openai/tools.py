"""Tool calling for the OpenAI API: `tool_choice`, and `<TOOLCALL>` output as streamed tool calls.

Super v1 answers a tool turn with `<TOOLCALL>[get_weather(city="Paris"), …]</TOOLCALL>`
(pythonic; a JSON list of {name, arguments} is read too: nemo_trt.serve.toolcall parses
both). `ToolCallStream` reads the answer text as it streams and turns it into plain
content plus OpenAI tool calls:

- Each call is emitted as soon as the model has finished writing it (the `,` or `]` after
  it), before the rest of the block or the generation: one delta with index, id, type and
  name (arguments ""), then its arguments as fragments (one per argument) whose
  concatenation is the arguments JSON. A call is only emitted once it parsed and its
  arguments validated against the tool's JSON schema (jsonschema), so what was streamed
  never has to be taken back.
- Malformed output is never an error: an item that does not parse or validate, a call to
  an unknown function, an unterminated block: that text (from the `<TOOLCALL>` tag if no
  call of the block was emitted yet) goes out as plain content, as the model wrote it.
- The result does not depend on how the text was chunked: the non-streamed response is the
  same parser fed the whole text at once (tests check every split point), so the
  concatenated stream deltas equal the non-streamed result.

`tool_choice`: `auto` renders the tools and parses; `none` renders no tools and parses
nothing; `required` and a named function cannot be forced by guided decoding here, so the
assistant turn is opened for the model with `<TOOLCALL>[` (or `<TOOLCALL>[name(`) through
the ensemble's `continue_final`: the model can only go on with a call.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError

from nemo_trt.model_facts import ToolFacts
from nemo_trt.serve.openai.errors import bad_request
from nemo_trt.serve.openai.protocol import ChatCompletionRequest, ToolParam
from nemo_trt.serve.openai.stops import held_suffix
from nemo_trt.serve.toolcall import ToolCallParseError, ToolSpec, ToolSpecError, parse_calls, parse_tools


# --------------------------------------------------------------------------- request side
@dataclass(frozen=True)
class ToolPlan:
    specs: tuple[ToolSpec, ...] = ()  # rendered into the prompt
    tools_json: str | None = None  # what the ensemble's `tools` input gets
    parse: bool = False  # read <TOOLCALL> blocks in the output
    prefill: str = ""  # opens the assistant turn (forced call)
    only: str | None = None  # the named function
    parallel: bool = True


def _validator(spec: ToolSpec, where: str) -> Any:
    schema = spec.parameters or {"type": "object"}
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise bad_request(f"{where}.function.parameters is not a valid JSON schema: {exc.message}",
                          f"{where}.function.parameters") from None
    return cls(schema)


def plan_tools(request: ChatCompletionRequest, facts: ToolFacts | None) -> tuple[ToolPlan, dict[str, Any]]:
    """The request's tools and tool_choice -> what to render and parse; validators by name."""
    tools: list[ToolParam] = list(request.tools or [])
    choice: Any = request.tool_choice
    if request.functions:  # deprecated form: functions / function_call
        if tools:
            raise bad_request("send tools or functions (deprecated), not both", "functions")
        tools = [ToolParam(function=f) for f in request.functions]
        if request.function_call is not None:
            choice = request.function_call if isinstance(request.function_call, str) else \
                {"type": "function", "function": {"name": request.function_call.name}}
    if not tools:
        if choice not in (None, "none"):
            raise bad_request("tool_choice needs tools: send the functions the model may call in `tools`",
                              "tool_choice")
        return ToolPlan(), {}
    if facts is None:
        raise bad_request("this model has no tool-calling format", "tools")
    raw = [t.model_dump(exclude_none=True) for t in tools]
    try:
        specs = parse_tools(raw)
    except ToolSpecError as exc:
        raise bad_request(str(exc), "tools") from None
    validators = {spec.name: _validator(spec, f"tools[{i}]") for i, spec in enumerate(specs)}
    tools_json = json.dumps(raw, ensure_ascii=False)
    parallel = request.parallel_tool_calls is not False
    if choice is None or choice == "auto":
        return ToolPlan(tuple(specs), tools_json, True, "", None, parallel), validators
    if choice == "none":
        return ToolPlan(), {}
    if choice == "required":
        return ToolPlan(tuple(specs), tools_json, True, facts.call_open + "[", None, parallel), validators
    name = choice["function"]["name"] if isinstance(choice, dict) else choice.function.name
    if name not in validators:
        raise bad_request(f"tool_choice names {name!r}, which is not in tools "
                          f"({', '.join(validators)})", "tool_choice")
    return ToolPlan(tuple(specs), tools_json, True, f"{facts.call_open}[{name}(", name, False), validators


# --------------------------------------------------------------------------- output side
@dataclass(frozen=True)
class ParsedCall:
    index: int
    id: str
    name: str
    arguments: str  # JSON object text
    fragments: tuple[str, ...]  # concatenated: `arguments`


@dataclass
class ToolEvents:
    content: str = ""
    calls: list[ParsedCall] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.calls)


def argument_fragments(arguments: dict[str, Any]) -> tuple[str, ...]:
    """JSON text of `arguments` in pieces, one per argument; joined == json.dumps(arguments)."""
    if not arguments:
        return ("{}",)
    parts = []
    for i, (key, value) in enumerate(arguments.items()):
        parts.append(("{" if i == 0 else ", ") + json.dumps(key, ensure_ascii=False) + ": "
                     + json.dumps(value, ensure_ascii=False))
    parts.append("}")
    return tuple(parts)


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


class ToolCallStream:
    """Feed answer text; get content and complete, validated calls back (see module doc)."""

    def __init__(self, validators: dict[str, Any], open_tag: str = "<TOOLCALL>", close_tag: str = "</TOOLCALL>",
                 parallel: bool = True, only: str | None = None):
        self.validators = validators
        self.names = list(validators)
        self.open_tag = open_tag
        self.close_tag = close_tag
        self.parallel = parallel
        self.only = only
        self.calls: list[ParsedCall] = []
        self._state = "text"
        self._pending = ""  # text state: held back (possible tag start, whitespace run)
        self._after_block = False
        self._block_reset()

    def _block_reset(self) -> None:
        self._body = ""
        self._pos = 0
        self._depth = 0
        self._quote: str | None = None
        self._mode: str | None = None  # "python" | "json"
        self._bracketed = False
        self._item_start = 0
        self._list_closed = False
        self._block_calls = 0
        self._fallback = False
        self._fallback_sent = 0  # body chars already sent as content in fallback

    # -- public ---------------------------------------------------------------
    def feed(self, text: str) -> ToolEvents:
        events = ToolEvents()
        self._run(text, events, final=False)
        return events

    def finish(self) -> ToolEvents:
        events = ToolEvents()
        self._run("", events, final=True)
        if self._state == "block":
            self._end_block(events, final=True)
        if self._pending and not (self.calls and not self._pending.strip()):
            events.content += self._pending
        self._pending = ""
        return events

    # -- text state -----------------------------------------------------------
    def _run(self, text: str, events: ToolEvents, final: bool) -> None:
        while True:
            if self._state == "text":
                buf = self._pending + text
                if self._after_block:  # whitespace between a call and more text is dropped
                    buf = buf.lstrip()
                    self._after_block = not buf
                index = buf.find(self.open_tag)
                if index >= 0:
                    events.content += buf[:index].rstrip()  # whitespace right before a call is dropped
                    self._pending = ""
                    self._state = "block"
                    self._block_reset()
                    text = buf[index + len(self.open_tag):]
                    continue
                keep = 0 if final else held_suffix(buf, [self.open_tag])
                body, tail = buf[: len(buf) - keep], buf[len(buf) - keep:]
                # a run of whitespace is held until text follows (dropped before a call)
                stripped = body.rstrip()
                events.content += stripped
                self._pending = body[len(stripped):] + tail
                return
            self._body += text
            leftover = self._scan(events, final)
            if leftover is None:
                return
            text = leftover  # the block ended: what followed it is text again

    # -- block state ----------------------------------------------------------
    def _scan(self, events: ToolEvents, final: bool) -> str | None:
        """Advance over the block body; the text after `</TOOLCALL>` once the block ended."""
        body = self._body
        while True:
            if self._fallback:
                index = body.find(self.close_tag, self._fallback_sent)
                if index >= 0:
                    end = index + len(self.close_tag)
                    events.content += body[self._fallback_sent:end]
                    self._leave_block(as_text=True)
                    return body[end:]
                keep = 0 if final else held_suffix(body, [self.close_tag])
                upto = max(self._fallback_sent, len(body) - keep)
                events.content += body[self._fallback_sent:upto]
                self._fallback_sent = upto
                return None
            p = self._pos
            if p >= len(body):
                return None
            c = body[p]
            if self._quote is not None:
                if c == "\\":
                    if p + 1 >= len(body) and not final:
                        return None
                    self._pos = p + 2
                    continue
                q = self._quote
                if len(q) == 3:
                    if body.startswith(q, p):
                        self._quote = None
                        self._pos = p + 3
                        continue
                    if c == q[0] and len(body) - p < 3 and not final:
                        return None
                    self._pos = p + 1
                    continue
                if c == q:
                    self._quote = None
                self._pos = p + 1
                continue
            if c == "<":
                rest = body[p:]
                if rest.startswith(self.close_tag):
                    self._item_end(p, events, closing=True)
                    if not self._fallback:
                        self._leave_block()
                        return body[p + len(self.close_tag):]
                    continue  # fallback from the bad item: its text, then the tag, as content
                if self.close_tag.startswith(rest) and not final:
                    return None
            if c.isspace():
                self._pos = p + 1
                continue
            if self._mode is None:
                if c == "[":
                    rest = body[p + 1:].lstrip()
                    if not rest and not final:
                        return None
                    self._mode = "json" if rest.startswith("{") else "python"
                    self._bracketed = True
                    self._depth = 1
                    self._item_start = p + 1
                    self._pos = p + 1
                    continue
                self._mode = "json" if c == "{" else "python"
                self._item_start = p
            if self._list_closed:
                # only whitespace may follow the list before </TOOLCALL>
                self._start_fallback(p, events)
                continue
            if c in "\"'":
                if c == "'" and self._mode == "json":
                    self._pos = p + 1
                    continue
                if self._mode == "python":
                    if len(body) - p < 3 and not final:
                        return None
                    if body.startswith(c * 3, p):
                        self._quote = c * 3
                        self._pos = p + 3
                        continue
                self._quote = c
                self._pos = p + 1
                continue
            if c in "([{":
                self._depth += 1
            elif c in ")]}":
                self._depth -= 1
                if self._depth < 0:
                    self._start_fallback(self._item_start, events)
                    continue
                if self._bracketed and self._depth == 0:
                    self._item_end(p, events, closing=False)
                    self._list_closed = True
                    self._pos = p + 1
                    continue
            elif c == "," and self._depth == (1 if self._bracketed else 0):
                self._item_end(p, events, closing=False)
                self._item_start = p + 1
            self._pos = p + 1

    def _item_end(self, end: int, events: ToolEvents, closing: bool) -> None:
        """The item body[item_start:end] is complete: emit it as a call, or fall back."""
        if self._fallback or (closing and self._list_closed):
            return
        if closing and self._bracketed and not self._list_closed:
            # `</TOOLCALL>` inside an unclosed list: lenient only if nothing is open
            if self._depth != 1 or self._quote is not None:
                self._start_fallback(self._item_start, events)
                return
        item = self._body[self._item_start:end].strip()
        if not item:
            return
        call = self._parse_item(item)
        if call is None:
            self._start_fallback(self._item_start, events)
            return
        if (self.calls and not self.parallel) or (self.only is not None and call[0] != self.only):
            return  # one call asked for (parallel_tool_calls false / a named function): the rest is dropped
        name, arguments = call
        fragments = argument_fragments(arguments)
        parsed = ParsedCall(len(self.calls), new_call_id(), name, "".join(fragments), fragments)
        self.calls.append(parsed)
        self._block_calls += 1
        events.calls.append(parsed)

    def _parse_item(self, item: str) -> tuple[str, dict[str, Any]] | None:
        try:
            calls = parse_calls(item, self.names)
        except (ToolCallParseError, RecursionError, MemoryError):
            return None
        if len(calls) != 1:
            return None
        call = calls[0]
        validator = self.validators.get(call.name)
        if validator is None or not validator.is_valid(call.arguments):
            return None
        return call.name, call.arguments

    def _start_fallback(self, start: int, events: ToolEvents) -> None:
        """From `start` on, the block is plain text (with the opening tag if nothing was emitted)."""
        self._fallback = True
        if self._block_calls == 0:
            start = 0
            events.content += self.open_tag
        self._fallback_sent = start

    def _end_block(self, events: ToolEvents, final: bool) -> None:
        """Generation ended inside a block (no `</TOOLCALL>`)."""
        if not self._fallback:
            if self._quote is not None or self._depth > (1 if self._bracketed and not self._list_closed else 0):
                self._start_fallback(self._item_start, events)
            elif not self._list_closed:
                self._item_end(len(self._body), events, closing=False)
        if self._fallback:
            events.content += self._body[self._fallback_sent:]
        self._state = "text"
        self._block_reset()

    def _leave_block(self, as_text: bool = False) -> None:
        self._state = "text"
        self._after_block = not as_text  # a block that went out as text keeps what follows as is
        self._block_reset()


def tool_result_content(content: str | list[Any] | None) -> str:
    """A tool message's content (string or text parts) as the text the model reads."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(getattr(part, "text", None) or "" for part in content)


def names_of(specs: Sequence[ToolSpec]) -> list[str]:
    return [s.name for s in specs]
