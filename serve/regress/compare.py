"""Pure comparison of a fresh run against the golden file and the suite's property checks.

Nothing here talks to a server: inputs are CaseRecords (observed and golden), outputs are verdicts.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from nemo_trt.serve.regress.golden import CaseRecord, Golden, ServerIdentity
from nemo_trt.serve.regress.suite import Bounds, Case, Checks

Decode = Callable[[list[int]], str]
LATENCY_METRICS = ("ttft_s", "itl_s", "total_s")
CONTEXT_BEFORE = 6
CONTEXT_AFTER = 8


@dataclass
class CheckResult:
    name: str
    passed: bool
    message: str = ""


@dataclass
class Divergence:
    """Where a fresh run first departs from the golden token stream."""

    position: int  # index into the output tokens (or characters, when unit == "char")
    unit: Literal["token", "char"]
    context: list[int] | str  # the agreed tokens/characters just before `position`
    expected: list[int] | str  # golden from `position` (a few)
    got: list[int] | str  # fresh run from `position` (a few)
    expected_len: int
    got_len: int
    context_text: str = ""
    expected_text: str = ""
    got_text: str = ""

    def describe(self) -> str:
        head = (f"first divergence at output {self.unit} {self.position} "
                f"(golden has {self.expected_len}, got {self.got_len})")
        if self.unit == "token":
            return (f"{head}\n  context : {self.context_text!r} {self.context}\n"
                    f"  expected: {self.expected_text!r} {self.expected}\n"
                    f"  got     : {self.got_text!r} {self.got}")
        return f"{head}\n  context : {self.context!r}\n  expected: {self.expected!r}\n  got     : {self.got!r}"


@dataclass
class CaseVerdict:
    name: str
    mode: Literal["tokens", "text", "properties"]
    checks: list[CheckResult] = field(default_factory=list)
    divergence: Divergence | None = None
    latency_ratios: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    observed: CaseRecord | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.error is None and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    def failure_message(self) -> str:
        lines = []
        if self.error:
            lines.append(self.error)
        lines += [f"{c.name}: {c.message}" for c in self.failures]
        return "\n".join(lines)


@dataclass
class LatencySummary:
    """Median over cases of fresh/golden ratios; > 1 means slower than the golden."""

    ratios: dict[str, float | None]
    tolerance_pct: float | None
    comparable: bool = True
    note: str = ""

    def failed_metrics(self) -> list[str]:
        if self.tolerance_pct is None:
            return []
        limit = 1.0 + self.tolerance_pct / 100.0
        return [m for m, r in self.ratios.items() if r is not None and r > limit]

    @property
    def passed(self) -> bool:
        return not self.failed_metrics()


@dataclass
class RegressionReport:
    suite: str
    server: ServerIdentity
    golden_server: ServerIdentity | None
    verdicts: list[CaseVerdict]
    latency: LatencySummary | None
    compatibility: list[str] = field(default_factory=list)
    properties_only: bool = False
    wall_s: float = 0.0

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts) and (self.latency is None or self.latency.passed)

    @property
    def counts(self) -> dict[str, int]:
        failed = sum(not v.passed for v in self.verdicts)
        return {"cases": len(self.verdicts), "passed": len(self.verdicts) - failed, "failed": failed}


# --------------------------------------------------------------------------- properties


def _bounds(name: str, value: int | None, bounds: Bounds | None) -> CheckResult | None:
    if bounds is None:
        return None
    if value is None:
        return CheckResult(name, False, "the server did not report it")
    if bounds.min is not None and value < bounds.min:
        return CheckResult(name, False, f"{value} < min {bounds.min}")
    if bounds.max is not None and value > bounds.max:
        return CheckResult(name, False, f"{value} > max {bounds.max}")
    return CheckResult(name, True, f"{value}")


def has_reasoning(record: CaseRecord, open_tag: str = "<think>", close_tag: str = "</think>") -> bool:
    """Reasoning structure: the server split out reasoning text, or the raw text carries the think tags."""
    return bool(record.reasoning.strip()) or open_tag in record.text or close_tag in record.text


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_properties(record: CaseRecord, checks: Checks) -> list[CheckResult]:
    out: list[CheckResult] = []
    if checks.finish_reason is not None:
        ok = record.finish_reason in checks.finish_reason
        out.append(CheckResult("finish_reason", ok,
                               f"{record.finish_reason} " + ("in" if ok else "not in") + f" {checks.finish_reason}"))
    if checks.reasoning != "any":
        present = has_reasoning(record)
        want = checks.reasoning == "present"
        msg = ("reasoning present" if present else "no reasoning") + f" (expected {checks.reasoning})"
        if present != want:
            msg += f"; text starts {_short(record.text)!r}"
        out.append(CheckResult("reasoning", present == want, msg))
    count = record.num_output_tokens if record.num_output_tokens is not None else (
        len(record.token_ids) if record.token_ids is not None else None)
    for result in (_bounds("output_tokens", count, checks.output_tokens),
                   _bounds("answer_chars", len(record.answer), checks.answer_chars)):
        if result is not None:
            out.append(result)
    for where, text, needles, want in (
        ("contains", record.text, checks.contains, True),
        ("not_contains", record.text, checks.not_contains, False),
        ("answer_contains", record.answer, checks.answer_contains, True),
        ("answer_not_contains", record.answer, checks.answer_not_contains, False),
    ):
        for needle in needles:
            found = needle in text
            out.append(CheckResult(f"{where}[{needle}]", found == want,
                                   ("found" if found else "not found") + f" in {_short(text)!r}"))
    return out


def check_stop_words(record: CaseRecord, stop_words: list[str]) -> CheckResult:
    """Nothing may follow a stop word: a stop word may only appear at the very end of the output."""
    text = record.text
    for word in stop_words:
        at = text.find(word)
        if at != -1 and at + len(word) < len(text.rstrip()) and text[at + len(word):].strip():
            return CheckResult("stop_words", False,
                               f"output continues after stop word {word!r} at char {at}: {_short(text[at:])!r}")
    if record.finish_reason == "length":
        return CheckResult("stop_words", True, "no stop word produced within max_tokens")
    return CheckResult("stop_words", True, "output ends at a stop word or the end token")


def check_prompt_tokens(record: CaseRecord) -> CheckResult:
    got, want = record.num_input_tokens, record.expected_input_tokens
    if got is None:
        return CheckResult("prompt_tokens_match", False, "the server did not report num_input_tokens")
    if got != want:
        return CheckResult("prompt_tokens_match", False,
                           f"the server's prompt has {got} tokens, the chat template with user text as plain text "
                           f"gives {want}: typed special tokens became control tokens, BOS doubled, or the "
                           "template differs")
    return CheckResult("prompt_tokens_match", True, f"{got} prompt tokens, as rendered locally")


# --------------------------------------------------------------------------- golden comparison


def first_divergence(expected: list[int], got: list[int], decode: Decode | None = None) -> Divergence | None:
    """None when identical; else the first differing position with a few tokens of context both sides."""
    n = min(len(expected), len(got))
    pos = next((i for i in range(n) if expected[i] != got[i]), n)
    if pos == len(expected) == len(got):
        return None
    ctx = expected[max(0, pos - CONTEXT_BEFORE):pos]
    exp = expected[pos:pos + CONTEXT_AFTER]
    got_part = got[pos:pos + CONTEXT_AFTER]
    div = Divergence(pos, "token", ctx, exp, got_part, len(expected), len(got))
    if decode is not None:
        div.context_text, div.expected_text, div.got_text = decode(ctx), decode(exp), decode(got_part)
    return div


def first_text_divergence(expected: str, got: str, width: int = 24) -> Divergence | None:
    if expected == got:
        return None
    n = min(len(expected), len(got))
    pos = next((i for i in range(n) if expected[i] != got[i]), n)
    return Divergence(pos, "char", expected[max(0, pos - width):pos], expected[pos:pos + width],
                      got[pos:pos + width], len(expected), len(got))


def compare_mode(case: Case, golden: Golden | None, server: ServerIdentity) -> tuple[str, str]:
    """('tokens' | 'properties', why) — exact comparison only where the backend promises it."""
    if golden is None:
        return "properties", "no golden file"
    if case.sampling.greedy:
        return "tokens", "greedy"
    if case.sampling.seed is None:
        return "properties", "sampled without a seed"
    if golden.server.deterministic_sampling and server.deterministic_sampling:
        return "tokens", "seeded; backend promises deterministic sampling"
    return "properties", "seeded, but the backend does not promise identical samples"


def compare_case(
    case: Case,
    checks: Checks,
    observed: CaseRecord,
    golden: Golden | None,
    server: ServerIdentity,
    decode: Decode | None = None,
) -> CaseVerdict:
    mode, why = compare_mode(case, golden, server)
    verdict = CaseVerdict(case.name, "properties", observed=observed)
    verdict.checks = check_properties(observed, checks)
    if case.stop_words:
        verdict.checks.append(check_stop_words(observed, case.stop_words))
    if checks.prompt_tokens_match:
        if observed.expected_input_tokens is None:
            verdict.notes.append("prompt_tokens_match not checked: no local tokenizer (pass --tokenizer)")
        else:
            verdict.checks.append(check_prompt_tokens(observed))
    if golden is None:
        return verdict
    expected = golden.cases.get(case.name)
    if expected is None:
        verdict.checks.append(CheckResult("golden", False, "case not in the golden file; re-record it"))
        return verdict
    verdict.latency_ratios = latency_ratios(expected, observed)
    if expected.max_tokens != observed.max_tokens:
        verdict.checks.append(CheckResult(
            "golden", False, f"max_tokens {observed.max_tokens} but golden was recorded with {expected.max_tokens}; "
                             "re-record the golden"))
        return verdict
    if expected.prompt_sha256 != observed.prompt_sha256:
        if case.prompt_tokens is not None:
            verdict.notes.append(
                f"padded prompt differs from the golden ({observed.prompt_chars} vs {expected.prompt_chars} chars: "
                "the server's max_input_len or tokenizer changed); compared by properties only")
            return verdict
        verdict.checks.append(CheckResult("golden", False, "request differs from the golden one (suite edited?); "
                                                           "re-record the golden"))
        return verdict
    if mode == "properties":
        verdict.notes.append(f"compared by properties: {why}")
        return verdict
    if expected.token_ids is not None and observed.token_ids is not None:
        verdict.mode = "tokens"
        div = first_divergence(expected.token_ids, observed.token_ids, decode)
        verdict.divergence = div
        verdict.checks.append(CheckResult(
            "tokens", div is None,
            f"{len(observed.token_ids)} tokens identical" if div is None else div.describe()))
    else:
        # Without token ids (server does not expose them) the texts must match exactly.
        verdict.mode = "text"
        verdict.notes.append("server or golden has no token ids; compared texts")
        div = first_text_divergence(expected.text, observed.text)
        verdict.divergence = div
        verdict.checks.append(CheckResult("text", div is None,
                                          f"{len(observed.text)} chars identical" if div is None else div.describe()))
    if (expected.num_input_tokens is not None and observed.num_input_tokens is not None
            and expected.num_input_tokens != observed.num_input_tokens):
        verdict.checks.append(CheckResult(
            "golden_prompt_tokens", False,
            f"the server tokenized the same request to {observed.num_input_tokens} tokens, golden "
            f"{expected.num_input_tokens}: the chat template or tokenizer changed"))
    if expected.finish_reason != observed.finish_reason:
        verdict.checks.append(CheckResult("golden_finish_reason", False,
                                          f"expected {expected.finish_reason}, got {observed.finish_reason}"))
    return verdict


def latency_ratios(expected: CaseRecord, observed: CaseRecord) -> dict[str, float]:
    out = {}
    for metric in LATENCY_METRICS:
        e, o = getattr(expected.timings, metric), getattr(observed.timings, metric)
        if e and o is not None and e > 0:
            out[metric] = o / e
    return out


def summarize_latency(verdicts: list[CaseVerdict], tolerance_pct: float | None, comparable: bool = True,
                      note: str = "") -> LatencySummary:
    ratios: dict[str, float | None] = {}
    for metric in LATENCY_METRICS:
        values = [v.latency_ratios[metric] for v in verdicts if v.error is None and metric in v.latency_ratios]
        ratios[metric] = statistics.median(values) if values else None
    return LatencySummary(ratios, tolerance_pct if comparable else None, comparable, note)


def compatibility_notes(golden: ServerIdentity, server: ServerIdentity) -> list[str]:
    """A different engine is allowed (that is what a regression check is for) but always stated."""
    notes = []
    weak = any((x.engine_id or "").startswith("config:") for x in (golden, server))
    if golden.engine_id != server.engine_id and weak:
        notes.append(f"engine configuration differs from the golden's ({(golden.engine_id or '?')[:20]} vs "
                     f"{(server.engine_id or '?')[:20]}): the repository exposes no manifest through Triton, so only "
                     "its paths/settings are compared — it may be the same engine in another place")
    elif golden.engine_id != server.engine_id:
        notes.append(f"engine differs from the golden's: golden {(golden.engine_id or 'unknown')[:16]} "
                     f"({golden.backend or '?'}), server {(server.engine_id or 'unknown')[:16]} "
                     f"({server.backend or '?'})")
    elif golden.manifest_sha256 != server.manifest_sha256:
        notes.append("same engine, but the repository manifest differs (settings or templates changed)")
    if golden.backend != server.backend:
        notes.append(f"backend differs: golden {golden.backend}, server {server.backend}")
    if golden.triton_version != server.triton_version:
        notes.append(f"Triton version differs: golden {golden.triton_version}, server {server.triton_version}")
    if golden.max_input_len != server.max_input_len:
        notes.append(f"max_input_len differs: golden {golden.max_input_len}, server {server.max_input_len}")
    return notes
