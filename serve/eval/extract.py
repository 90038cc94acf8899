"""Pull the final answer out of a model's *answer* text (never the reasoning): pure string functions.

Math follows NeMo-Skills: the content of the **last** `\\boxed{...}` (brace-matched), else the
last "final answer is X". Taking one box ourselves sidesteps math-verify's pitfalls with several
boxes (it parses `\\boxed{70} ... \\boxed{49}` as the set {49, 70}) and with an early box
outranking a later answer (accuracy-eval.md §3.1). MCQ follows NS's relaxed multichoice rule:
boxed content (one letter, or its last standalone capital A-D), else the last `Answer: X`.
"""
from __future__ import annotations

import re
import unicodedata

_BOX_OPENERS = ("\\boxed", "\\fbox")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` with balanced braces; None if there is none."""
    best: tuple[int, str] | None = None
    for opener in _BOX_OPENERS:
        start = text.rfind(opener)
        while start != -1:
            content = _braced_after(text, start + len(opener))
            if content is not None:
                if best is None or start > best[0]:
                    best = (start, content)
                break
            start = text.rfind(opener, 0, start)
    return None if best is None else best[1].strip()


def _braced_after(text: str, pos: int) -> str | None:
    while pos < len(text) and text[pos] == " ":
        pos += 1
    if pos >= len(text) or text[pos] != "{":
        return None
    depth = 0
    for i in range(pos, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[pos + 1:i]
    return None  # unbalanced: cut off mid-answer


_FINAL_ANSWER = re.compile(r"final answer is:?\s*\$?(.+?)\$?\s*\.?\s*$", re.IGNORECASE | re.MULTILINE)


def extract_math(answer: str) -> str | None:
    boxed = last_boxed(answer)
    if boxed is not None:
        return boxed or None
    matches = _FINAL_ANSWER.findall(answer)
    return matches[-1].strip() if matches else None


_LETTER = re.compile(r"\b([A-D])\b")
_ANSWER_LINE = re.compile(r"answer\s*(?:is)?\s*:?\s*[*_]*\(?([A-D])\)?[*_]*(?![A-Za-z])", re.IGNORECASE)


def extract_letter(answer: str) -> str | None:
    boxed = last_boxed(answer)
    if boxed is not None:
        inner = re.sub(r"\\text(?:bf)?\{([^{}]*)\}", r"\1", boxed).strip()
        if len(inner) == 1 and inner.upper() in "ABCD":
            return inner.upper()
        letters = _LETTER.findall(inner)
        if letters:
            return letters[-1]
    matches = _ANSWER_LINE.findall(answer)
    return matches[-1].upper() if matches else None


_TRAILING = ".!?。"


def normalize_text(text: str) -> str:
    """Exact-match normalisation: Unicode NFKC, case-folded, whitespace collapsed, outer quotes and
    a trailing full stop dropped."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = " ".join(text.split())
    text = text.strip(" \"'`")
    while text and text[-1] in _TRAILING:
        text = text[:-1].rstrip()
    return text


def extract_exact(answer: str) -> str | None:
    boxed = last_boxed(answer)
    text = boxed if boxed is not None else answer
    text = normalize_text(text)
    return text or None
