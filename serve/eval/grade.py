"""Is an extracted answer right? math-verify for maths, letters for MCQ, normalised text for exact.

math-verify's timeouts use `signal.alarm`, which only works in the main thread (issues #42/#55):
`nemo-trt eval` grades in its main thread and keeps them; anywhere else they are switched off.
Both sides are wrapped in `$...$` before parsing (a raw `10\\%` parses as 10, a wrapped one as
1/10; accuracy-eval.md §3.1), and the gold answer goes first (`verify` is not symmetric).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Literal

from nemo_trt.serve.eval import extract

Task = Literal["math", "mcq", "exact"]
TIMEOUT_S = 5


@dataclass(frozen=True)
class Grade:
    extracted: str | None
    correct: bool


def _timeouts() -> int | None:
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse(text: str):
    from math_verify import parse

    return parse(text, parsing_timeout=_timeouts())


def math_equal(gold: str, predicted: str) -> bool:
    """math-verify equivalence (fractions, \\frac, units in text, leading zeros, sets, intervals)."""
    from math_verify import verify

    if extract.normalize_text(gold) == extract.normalize_text(predicted):
        return True
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled" warnings off threads
    gold_parsed = _parse(_wrap(gold))
    if not gold_parsed:
        return False
    # Unwrapped only when the wrapped text does not parse: unwrapped, math-verify hunts for any
    # number in the text (`\\{49, 70\\}` would match gold 70).
    parsed = _parse(_wrap(predicted)) or _parse(predicted)
    return bool(parsed) and bool(verify(gold_parsed, parsed, timeout_seconds=_timeouts()))


def _wrap(text: str) -> str:
    text = text.strip()
    return text if text.startswith("$") else f"${text}$"


def grade(task: Task, answer_text: str, gold: str) -> Grade:
    """Grade one sample's answer part against the dataset's gold answer."""
    if task == "math":
        predicted = extract.extract_math(answer_text)
        return Grade(predicted, predicted is not None and math_equal(gold, predicted))
    if task == "mcq":
        letter = extract.extract_letter(answer_text)
        return Grade(letter, letter is not None and letter == gold.strip().upper())
    text = extract.extract_exact(answer_text)
    return Grade(text, text is not None and text == extract.normalize_text(gold))
