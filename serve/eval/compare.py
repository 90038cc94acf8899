"""What the run is compared with: a published figure (`--expect 96.6±1`) or a baseline run's result."""
from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel

from nemo_trt.errors import NemoTrtError
from nemo_trt.serve.eval import stats
from nemo_trt.serve.eval.score import QuestionReport

_EXPECT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%?\s*(?:(?:±|\+-|\+/-)\s*(\d+(?:\.\d+)?)\s*%?)?\s*$")


class Expectation(BaseModel):
    score: float  # percent
    tolerance: float = 0.0  # percent points
    source: str  # "--expect" or "model card <benchmark> (reasoning on)"


def parse_expect(text: str, source: str = "--expect") -> Expectation:
    match = _EXPECT.match(text)
    if not match:
        raise NemoTrtError(f"--expect {text!r} is not SCORE or SCORE±TOL",
                           "give percent points, e.g. --expect 96.6 or --expect 96.6±1.5 (or 96.6+-1.5)")
    score, tol = float(match.group(1)), float(match.group(2) or 0.0)
    if not 0 <= score <= 100 or tol > 100:
        raise NemoTrtError(f"--expect {text!r} is outside 0-100", "scores are pass@1 in percent")
    return Expectation(score=score, tolerance=tol, source=source)


class Comparison(BaseModel):
    against: str  # "expect" | "baseline"
    reference: str  # what: the figure, or the baseline file
    reference_pass_at_1: float  # fraction
    observed_pass_at_1: float  # fraction (on the compared questions)
    difference_points: float
    tolerance_points: float
    questions_compared: int
    test: str
    p_value: float
    alpha: float
    significant_drop: bool
    detail: str
    notes: list[str] = []


def against_expectation(questions: list[QuestionReport], expect: Expectation, alpha: float) -> Comparison:
    correct = [q.correct for q in questions]
    ks = [q.samples for q in questions]
    decision = stats.expect_test(correct, ks, expect.score / 100, expect.tolerance / 100, alpha)
    observed = stats.pass_at_1(correct, ks)
    return Comparison(against="expect", reference=expect.source, reference_pass_at_1=expect.score / 100,
                      observed_pass_at_1=observed, difference_points=(observed - expect.score / 100) * 100,
                      tolerance_points=expect.tolerance, questions_compared=len(questions), test=decision.test,
                      p_value=decision.p_value, alpha=alpha, significant_drop=decision.significant_drop,
                      detail=decision.detail)


def load_baseline(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NemoTrtError(f"baseline {path} does not exist",
                           "pass a RESULT.json written by `nemo-trt eval --out`") from None
    except (OSError, ValueError) as exc:
        raise NemoTrtError(f"baseline {path} is not readable JSON: {exc}",
                           "pass a RESULT.json written by `nemo-trt eval --out`") from None
    if not isinstance(data, dict) or "questions" not in data or "settings" not in data:
        raise NemoTrtError(f"{path} is not a `nemo-trt eval` result (no questions/settings)",
                           "pass a RESULT.json written by `nemo-trt eval --out`")
    return data


def against_baseline(questions: list[QuestionReport], baseline: dict, baseline_path: str, settings: dict,
                     dataset_sha256: str, alpha: float, tolerance: float = 0.0) -> Comparison:
    """Paired over the questions both runs answered (by id)."""
    theirs = {str(q["id"]): (int(q["correct"]), int(q["samples"])) for q in baseline["questions"]}
    pairs = [((q.correct, q.samples), theirs[q.id]) for q in questions if q.id in theirs]
    if not pairs:
        raise NemoTrtError(f"the baseline {baseline_path} shares no question id with this dataset",
                           "compare runs of the same dataset file")
    notes = []
    if baseline.get("dataset", {}).get("sha256") != dataset_sha256:
        notes.append(f"the baseline ran another version of the dataset; compared on the {len(pairs)} "
                     "question ids both have")
    for key in ("task", "reasoning", "max_tokens", "temperature", "top_p"):
        mine, ref = settings.get(key), baseline["settings"].get(key)
        if mine != ref:
            notes.append(f"{key} differs from the baseline: {ref} -> {mine}")
    new = [n for n, _ in pairs]
    ref = [r for _, r in pairs]
    decision = stats.paired_test(new, ref, tolerance / 100, alpha)
    observed = stats.pass_at_1([c for c, _ in new], [k for _, k in new])
    reference = stats.pass_at_1([c for c, _ in ref], [k for _, k in ref])
    return Comparison(against="baseline", reference=str(baseline_path), reference_pass_at_1=reference,
                      observed_pass_at_1=observed, difference_points=(observed - reference) * 100,
                      tolerance_points=tolerance, questions_compared=len(pairs), test=decision.test,
                      p_value=decision.p_value, alpha=alpha, significant_drop=decision.significant_drop,
                      detail=decision.detail, notes=notes)
