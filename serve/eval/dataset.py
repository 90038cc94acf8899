"""The user's benchmark copy: JSONL lines `{"question", "answer", "choices"?, "id"?}`, checked line by line."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from nemo_trt.errors import NemoTrtError
from nemo_trt.serve.eval.grade import Task

LETTERS = "ABCD"


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answer: str  # mcq: the letter A-D
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Dataset:
    path: Path
    task: Task
    questions: tuple[Question, ...]
    sha256: str  # of the parsed content (ids, questions, answers, choices): stable under reformatting


def _bad(path: Path, line: int, problem: str, fix: str) -> NemoTrtError:
    return NemoTrtError(f"{path}, line {line}: {problem}", fix)


def _answer_text(value, path: Path, line: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _bad(path, line, f"`answer` must be a string or a number, got {type(value).__name__}",
                   'write the gold answer as a string, e.g. "answer": "\\\\frac{1}{2}" or "answer": "B"')
    text = str(value).strip()
    if not text:
        raise _bad(path, line, "`answer` is empty", "give the gold answer of this question")
    return text


def _parse_line(raw: dict, path: Path, line: int, task: Task) -> Question:
    question = raw.get("question")
    if not isinstance(question, str) or not question.strip():
        raise _bad(path, line, "missing or empty `question`",
                   'every line needs "question": "..." (convert the public set\'s field, e.g. MATH-500 `problem`)')
    if "answer" not in raw:
        raise _bad(path, line, "missing `answer`", 'every line needs "answer": "..." (the gold answer)')
    answer = _answer_text(raw["answer"], path, line)
    choices = raw.get("choices")
    if task == "mcq":
        if not isinstance(choices, list) or len(choices) != 4 or not all(isinstance(c, str) for c in choices):
            raise _bad(path, line, "an mcq line needs `choices`: a list of exactly 4 strings (A-D)",
                       'add "choices": ["...", "...", "...", "..."] in the order the letters name them')
        if answer.upper() in LETTERS and len(answer) == 1:
            answer = answer.upper()
        elif answer in choices:
            answer = LETTERS[choices.index(answer)]
        else:
            raise _bad(path, line, f"mcq `answer` {answer!r} is neither a letter A-D nor one of the choices",
                       'give the letter of the correct choice, e.g. "answer": "C"')
    elif choices is not None:
        raise _bad(path, line, f"`choices` given on a {task!r} line",
                   "use --task mcq for multiple-choice data, or drop `choices`")
    ident = raw.get("id")
    if ident is None:
        # Content-derived, so inserting a line elsewhere neither renames nor re-runs this question.
        ident = "q-" + hashlib.sha256(question.encode()).hexdigest()[:12]
    elif isinstance(ident, bool) or not isinstance(ident, (str, int)) or not str(ident).strip():
        raise _bad(path, line, f"`id` must be a non-empty string or integer, got {ident!r}",
                   "give each question a unique id, or leave `id` out")
    return Question(str(ident).strip(), question, answer, tuple(choices) if choices is not None else None)


def load_dataset(path: str | Path, task: Task) -> Dataset:
    path = Path(path)
    if not path.is_file():
        raise NemoTrtError(f"dataset {path} does not exist", "pass --dataset FILE.jsonl (see README: "
                           "'Check accuracy after a rebuild' for making one from the public sets)")
    questions: list[Question] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as fh:
        for number, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as exc:
                raise _bad(path, number, f"not valid JSON ({exc.msg} at column {exc.colno})",
                           "write one JSON object per line (JSON Lines)") from None
            if not isinstance(raw, dict):
                raise _bad(path, number, f"expected a JSON object, got {type(raw).__name__}",
                           'write one object per line: {"question": ..., "answer": ...}')
            q = _parse_line(raw, path, number, task)
            if q.id in seen:
                raise _bad(path, number, f"duplicate id {q.id!r} (first on line {seen[q.id]})",
                           "give every question a unique `id`" + ("" if "id" in raw else
                                                                  " (this question text appears twice)"))
            seen[q.id] = number
            questions.append(q)
    if not questions:
        raise NemoTrtError(f"dataset {path} has no questions", "add JSON lines with `question` and `answer`")
    digest = hashlib.sha256(json.dumps([[q.id, q.question, q.answer, q.choices] for q in questions],
                                       ensure_ascii=False).encode()).hexdigest()
    return Dataset(path, task, tuple(questions), digest)


def benchmark_name(path: str | Path, known: list[str]) -> str | None:
    """The card benchmark a file is named after (`math500.jsonl`, `AIME25-on.jsonl`, `gpqa_diamond.jsonl`)."""
    stem = re.sub(r"[^a-z0-9]", "", Path(path).stem.lower())
    for name in sorted(known, key=len, reverse=True):
        key = re.sub(r"[^a-z0-9]", "", name.lower())
        if key in stem or (name.startswith("gpqa") and "gpqa" in stem):
            return name
    return None
