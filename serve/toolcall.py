"""Tool definitions and tool calls in the Super-49B v1 format, as pure functions.

The model is given its tools as a JSON list of function definitions inside
`<AVAILABLE_TOOLS>…</AVAILABLE_TOOLS>` and answers with pythonic calls inside
`<TOOLCALL>[get_weather(city="Paris"), …]</TOOLCALL>` (model card, BFCL prompt;
model-nemotron-super-49b-v1.md §12). Some fine-tunes of the family write a JSON list
of `{"name", "arguments"}` instead (the HF plugin's `llama_nemotron_json`); both are
read. Calls in the history are written back in the pythonic form the model uses.

Arguments travel as JSON objects (OpenAI's `arguments` is a JSON string); in the
pythonic form they are Python literals, which for JSON values is a 1:1 mapping
(`true` ↔ `True`, `null` ↔ `None`), so `format_calls` and `parse_calls` are inverses.
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from typing import Any

# OpenAI's rule for function names. A name with `-` or `.` is not a Python identifier:
# such names are swapped for placeholders before the pythonic form is parsed.
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class ToolSpecError(ValueError):
    """A tool definition or a tool call in the request is malformed; shown to the client."""


class ToolCallParseError(ValueError):
    """The model's output is not a well-formed tool call (the caller falls back to text)."""


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)

    def as_prompt_json(self) -> dict[str, Any]:
        # The card's BFCL prompt lists bare function objects (no OpenAI `type` wrapper).
        item: dict[str, Any] = {"name": self.name}
        if self.description:
            item["description"] = self.description
        item["parameters"] = self.parameters or {"type": "object", "properties": {}}
        return item


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = ""

    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)


# --------------------------------------------------------------------------- request side
def parse_tools(raw: Any) -> list[ToolSpec]:
    """OpenAI `tools` (a list of {"type": "function", "function": {...}}) → ToolSpec list."""
    if isinstance(raw, (bytes, str)):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ToolSpecError(f"tools is not valid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(raw, list):
        raise ToolSpecError(f"tools must be a list of function tools, got {type(raw).__name__}")
    specs: list[ToolSpec] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ToolSpecError(f"tools[{i}] must be an object, got {type(item).__name__}")
        if item.get("type", "function") != "function":
            raise ToolSpecError(f"tools[{i}].type {item.get('type')!r} is not supported: only 'function' tools")
        fn = item.get("function", item)  # bare function objects are accepted too
        if not isinstance(fn, dict):
            raise ToolSpecError(f"tools[{i}].function must be an object")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ToolSpecError(f"tools[{i}].function.name {name!r} must be 1-64 characters of a-z, A-Z, 0-9, _ . -")
        description = fn.get("description", "") or ""
        if not isinstance(description, str):
            raise ToolSpecError(f"tools[{i}].function.description must be a string")
        parameters = fn.get("parameters")
        parameters = {} if parameters is None else parameters
        if not isinstance(parameters, dict):
            raise ToolSpecError(f"tools[{i}].function.parameters must be a JSON schema object")
        specs.append(ToolSpec(name, description, parameters))
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ToolSpecError(f"tools has more than one function named {', '.join(duplicates)}")
    return specs


def parse_call_list(raw: Any, where: str) -> list[ToolCall]:
    """OpenAI assistant `tool_calls` (history) → ToolCall list; arguments may be a JSON string."""
    if not isinstance(raw, list):
        raise ToolSpecError(f"{where} must be a list")
    calls = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ToolSpecError(f"{where}[{i}] must be an object")
        fn = item.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ToolSpecError(f"{where}[{i}].function.name is missing")
        arguments = fn.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                raise ToolSpecError(f"{where}[{i}].function.arguments is not valid JSON") from None
        if not isinstance(arguments, dict):
            raise ToolSpecError(f"{where}[{i}].function.arguments must be a JSON object")
        calls.append(ToolCall(fn["name"], arguments, str(item.get("id") or "")))
    return calls


# --------------------------------------------------------------------------- model side
def _literal(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and value != value:  # NaN has no JSON form either
            raise ToolSpecError("tool call arguments must be JSON values (NaN is not)")
        return repr(value)
    if isinstance(value, str):
        # A JSON string literal is a valid Python literal with the same value.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)}: {_literal(v)}"
                               for k, v in value.items()) + "}"
    raise ToolSpecError(f"tool call arguments must be JSON values, got {type(value).__name__}")


def format_calls(calls: list[ToolCall], open_tag: str = "<TOOLCALL>", close_tag: str = "</TOOLCALL>") -> str:
    """Calls as the model writes them: `<TOOLCALL>[f(a=1, b="x"), g()]</TOOLCALL>`."""
    parts = []
    for call in calls:
        args = ", ".join(f"{k}={_literal(v)}" for k, v in call.arguments.items())
        parts.append(f"{call.name}({args})")
    return f"{open_tag}[{', '.join(parts)}]{close_tag}"


def _value(node: ast.AST) -> Any:
    value = ast.literal_eval(node)
    # Sets, tuples, bytes and complex numbers are Python literals but not JSON values.
    if isinstance(value, tuple):
        value = list(value)
    json.dumps(value)  # raises TypeError for what JSON cannot carry
    return value


def _parse_pythonic(body: str, names: list[str]) -> list[ToolCall]:
    placeholders = {}
    for i, name in enumerate(sorted((n for n in names if not n.isidentifier()), key=len, reverse=True)):
        placeholder = f"__nemo_trt_tool_{i}__"
        placeholders[placeholder] = name
        body = re.sub(rf"(?<![\w.\-]){re.escape(name)}(?=\s*\()", placeholder, body)
    try:
        tree = ast.parse(body.strip(), mode="eval")
    except SyntaxError as exc:
        raise ToolCallParseError(f"not a pythonic call list: {exc.msg}") from None
    node = tree.body
    items = node.elts if isinstance(node, (ast.List, ast.Tuple)) else [node]
    calls = []
    for item in items:
        if not isinstance(item, ast.Call) or not isinstance(item.func, ast.Name):
            raise ToolCallParseError("every item must be a call like name(arg=value)")
        if item.args:
            raise ToolCallParseError(f"{item.func.id}: arguments must be named (arg=value)")
        arguments = {}
        for keyword in item.keywords:
            if keyword.arg is None:
                raise ToolCallParseError(f"{item.func.id}: **kwargs is not a value")
            try:
                arguments[keyword.arg] = _value(keyword.value)
            except (ValueError, TypeError, SyntaxError):
                raise ToolCallParseError(f"{item.func.id}: argument {keyword.arg} is not a literal value") from None
        calls.append(ToolCall(placeholders.get(item.func.id, item.func.id), arguments))
    return calls


def _parse_json(body: str) -> list[ToolCall]:
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ToolCallParseError(f"not a JSON call list: {exc.msg}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ToolCallParseError("a JSON tool call must be a list of {name, arguments}")
    calls = []
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ToolCallParseError("every JSON tool call needs a string name")
        arguments = item.get("arguments", item.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                raise ToolCallParseError(f"{item['name']}: arguments is not JSON") from None
        if not isinstance(arguments, dict):
            raise ToolCallParseError(f"{item['name']}: arguments must be an object")
        calls.append(ToolCall(item["name"], arguments))
    return calls


def parse_calls(body: str, names: list[str] | None = None) -> list[ToolCall]:
    """The text inside `<TOOLCALL>…</TOOLCALL>` → calls (pythonic list, else JSON list).

    `names`: the request's tool names, needed to read names that are not Python identifiers.
    Raises ToolCallParseError when neither form parses.
    """
    text = body.strip()
    if not text:
        raise ToolCallParseError("empty tool call")
    if text.startswith("[{") or text.startswith("{"):
        try:
            return _parse_json(text)
        except ToolCallParseError:
            pass
    return _parse_pythonic(text, names or [])
