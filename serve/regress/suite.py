"""The regression suite: a YAML file of cases (prompt or chat messages, reasoning, sampling, checks).

Example (configs/regress/default.yaml has the full set)::

    name: default
    defaults: {max_tokens: 48, checks: {finish_reason: [stop, length]}}
    cases:
      - name: greedy-off
        messages: [{role: user, content: "Name three colours."}]
        reasoning: "off"
        sampling: greedy
        checks: {reasoning: absent, output_tokens: {min: 1}}
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nemo_trt.errors import NemoTrtError

FinishReason = Literal["stop", "length"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Sampling(_Strict):
    """Greedy (temperature 0) or seeded/unseeded sampling."""

    temperature: float = Field(0.0, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    seed: int | None = Field(None, ge=0)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 and (self.top_k in (None, 0, 1))

    @property
    def reproducible(self) -> bool:
        """Greedy, or sampled with a fixed seed (reproducible only where the backend promises it)."""
        return self.greedy or self.seed is not None

    def label(self) -> str:
        if self.greedy:
            return "greedy"
        parts = [f"T={self.temperature:g}"]
        if self.top_p is not None:
            parts.append(f"top_p={self.top_p:g}")
        if self.top_k:
            parts.append(f"top_k={self.top_k}")
        parts.append(f"seed={self.seed}" if self.seed is not None else "unseeded")
        return " ".join(parts)


class Bounds(_Strict):
    min: int | None = Field(None, ge=0)
    max: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Bounds:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max})")
        return self


class Checks(_Strict):
    """Properties a result must have, whatever the golden says (also used by --properties-only)."""

    finish_reason: list[FinishReason] | None = None
    # present: reasoning text (or a <think>…</think> block) produced; absent: none at all.
    reasoning: Literal["present", "absent", "any"] = "any"
    output_tokens: Bounds | None = None
    answer_chars: Bounds | None = None
    contains: list[str] = Field(default_factory=list)  # in the full text
    not_contains: list[str] = Field(default_factory=list)  # in the full text
    answer_contains: list[str] = Field(default_factory=list)
    answer_not_contains: list[str] = Field(default_factory=list)
    # The server's prompt length equals the template rendered with user text as plain text: catches
    # typed `<|eot_id|>` becoming a control token, a doubled BOS, a changed template (needs a tokenizer).
    prompt_tokens_match: bool = False

    def merged_over(self, base: Checks | None) -> Checks:
        """Case checks override suite defaults field by field (only fields the case sets)."""
        if base is None:
            return self
        data = base.model_dump()
        data.update(self.model_dump(exclude_unset=True))
        return Checks.model_validate(data)


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class Case(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    prompt: str | None = None
    messages: list[Message] | None = None
    # Pad the prompt with filler so the rendered request is this many tokens long:
    # an int, or "near_limit" (the server's max_input_len minus `limit_margin`).
    prompt_tokens: int | Literal["near_limit"] | None = None
    limit_margin: int = Field(16, ge=0)
    reasoning: Literal["on", "off"] | None = None
    sampling: Sampling = Field(default_factory=Sampling)
    max_tokens: int | None = Field(None, ge=1)
    stop_words: list[str] = Field(default_factory=list)
    checks: Checks = Field(default_factory=Checks)

    @field_validator("sampling", mode="before")
    @classmethod
    def _sampling_shorthand(cls, value):
        if value == "greedy" or value is None:
            return {}
        return value

    @model_validator(mode="after")
    def _one_input(self) -> Case:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        if self.messages is not None:
            if not self.messages:
                raise ValueError("`messages` is empty")
            if self.messages[-1].role != "user":
                raise ValueError("the last message must be from the user")
        return self


class SuiteDefaults(_Strict):
    max_tokens: int = Field(64, ge=1)
    checks: Checks = Field(default_factory=Checks)


class Suite(_Strict):
    name: str
    description: str = ""
    model: str = "ensemble"
    defaults: SuiteDefaults = Field(default_factory=SuiteDefaults)
    cases: list[Case] = Field(min_length=1)
    # Set by load_suite: where it came from and a digest of its content.
    source: str = Field("", exclude=True)
    sha256: str = Field("", exclude=True)

    @model_validator(mode="after")
    def _unique_names(self) -> Suite:
        seen: set[str] = set()
        for case in self.cases:
            if case.name in seen:
                raise ValueError(f"case name {case.name!r} appears twice")
            seen.add(case.name)
        return self

    def case(self, name: str) -> Case:
        for case in self.cases:
            if case.name == name:
                return case
        raise KeyError(name)

    def max_tokens(self, case: Case) -> int:
        return case.max_tokens or self.defaults.max_tokens

    def checks(self, case: Case) -> Checks:
        return case.checks.merged_over(self.defaults.checks)

    def select(self, names: list[str] | None) -> list[Case]:
        if not names:
            return list(self.cases)
        unknown = [n for n in names if n not in {c.name for c in self.cases}]
        if unknown:
            raise NemoTrtError(
                f"suite {self.name!r} has no case(s) {', '.join(unknown)}",
                f"pick from: {', '.join(c.name for c in self.cases)}",
            )
        return [c for c in self.cases if c.name in names]


def _where(loc: tuple, raw: dict) -> str:
    """'case "x" (#3) → checks.output_tokens.min' from a pydantic error location."""
    if len(loc) >= 2 and loc[0] == "cases" and isinstance(loc[1], int):
        cases = raw.get("cases") or []
        name = cases[loc[1]].get("name") if loc[1] < len(cases) and isinstance(cases[loc[1]], dict) else None
        label = f'case "{name}" (#{loc[1] + 1})' if name else f"case #{loc[1] + 1}"
        rest = ".".join(str(p) for p in loc[2:])
        return f"{label}{': ' + rest if rest else ''}"
    return ".".join(str(p) for p in loc) or "top level"


def parse_suite(raw: object, source: str = "<suite>") -> Suite:
    if not isinstance(raw, dict):
        raise NemoTrtError(f"{source}: a suite must be a YAML mapping with `name` and `cases`",
                           "see configs/regress/default.yaml for the format")
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as exc:
        lines = [f"  {_where(tuple(e['loc']), raw)}: {e['msg']}" for e in exc.errors()]
        raise NemoTrtError(
            f"{source}: invalid regression suite\n" + "\n".join(lines),
            "fix the fields named above (format: configs/regress/default.yaml)",
        ) from None
    suite.source = source
    suite.sha256 = hashlib.sha256(json.dumps(raw, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return suite


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite; errors name the file and the case."""
    from nemo_trt.resources import configs_dir

    path = Path(path)
    label = str(path)
    if not path.exists() and not path.suffix:
        builtin = configs_dir() / "regress" / f"{path}.yaml"
        if builtin.is_file():
            path, label = builtin, f"builtin:{path}"
    if not path.is_file():
        raise NemoTrtError(f"suite file {path} not found",
                           "pass a YAML file, or a built-in suite name such as `default`")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise NemoTrtError(f"{path}: not valid YAML: {exc}", "fix the YAML syntax") from None
    suite = parse_suite(raw, str(path))
    suite.source = label  # what the user named (portable), not this machine's absolute path
    return suite
