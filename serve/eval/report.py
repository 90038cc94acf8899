"""The run's result: RESULT.json (summary + per-question counts, what `--baseline` reads), the
per-question report beside it (every sample: extracted answer, right or not, tokens, truncated),
JUnit XML for CI, and a rich summary for people."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from rich.console import Console

from nemo_trt.atomic import atomic_write_text
from nemo_trt.serve.eval.compare import Comparison
from nemo_trt.serve.eval.score import QuestionReport, Score

FORMAT = "nemo-trt-eval/1"


class DatasetRef(BaseModel):
    path: str
    sha256: str
    task: str
    questions: int
    benchmark: str | None = None


class Power(BaseModel):
    drop_points: float
    alpha: float
    power: float
    assumed_variance: float  # mean per-question sampling variance the sizes assume
    samples_needed: int | None  # K at this question count
    questions_needed: int  # at this K
    sentence: str


class EvalResult(BaseModel):
    format: str = FORMAT
    finished_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    nemo_trt_version: str = ""
    dataset: DatasetRef
    server: dict[str, Any]
    settings: dict[str, Any]
    score: Score
    comparison: Comparison | None = None
    power: Power
    wall_s: float
    resumed_samples: int
    questions: list[dict[str, Any]]  # compact: id, correct, samples, truncated, no_answer

    @property
    def passed(self) -> bool:
        return self.comparison is None or not self.comparison.significant_drop


def questions_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".questions.json")


def compact(questions: list[QuestionReport]) -> list[dict[str, Any]]:
    return [{"id": q.id, "correct": q.correct, "samples": q.samples, "truncated": q.truncated,
             "no_answer": q.no_answer} for q in questions]


def save(result: EvalResult, questions: list[QuestionReport], out: str | Path) -> Path:
    """RESULT.json and RESULT.questions.json, each written atomically."""
    detail = questions_path(out)
    atomic_write_text(detail, json.dumps({"format": FORMAT + "/questions", "dataset": result.dataset.model_dump(),
                                          "questions": [q.model_dump() for q in questions]},
                                         indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(out, json.dumps(result.model_dump(mode="json"), indent=1, ensure_ascii=False) + "\n")
    return detail


def to_junit(result: EvalResult, questions: list[QuestionReport]) -> str:
    """One testcase for the accuracy decision (fails only on a significant drop), then one per
    question as informational testcases (a wrong answer is not a CI failure: noise is expected)."""
    suites = ET.Element("testsuites")
    name = result.dataset.benchmark or Path(result.dataset.path).stem
    suite = ET.SubElement(suites, "testsuite", name=f"nemo-trt-eval.{name}", tests="1",
                          failures="1" if not result.passed else "0", errors="0", time=f"{result.wall_s:.3f}")
    case = ET.SubElement(suite, "testcase", classname=f"eval.{name}",
                         name=f"pass@1 reasoning {result.settings['reasoning']}", time=f"{result.wall_s:.3f}")
    s, c = result.score, result.comparison
    summary = (f"pass@1 {s.pass_at_1 * 100:.2f} (95% CI {s.ci_bootstrap[0] * 100:.2f}-{s.ci_bootstrap[1] * 100:.2f}) "
               f"on {s.questions} questions x {s.samples_per_question} samples; truncated {s.truncated}")
    if c is not None and c.significant_drop:
        failure = ET.SubElement(case, "failure", type="AccuracyDrop",
                                message=f"significant drop vs {c.reference}: {c.difference_points:+.2f} points, "
                                        f"p={c.p_value:.4g} < alpha {c.alpha:g}")
        failure.text = summary + "\n" + c.detail
    out = ET.SubElement(case, "system-out")
    out.text = summary + ("" if c is None else f"\n{c.test}: p={c.p_value:.4g}; {c.detail}")
    detail = ET.SubElement(suites, "testsuite", name=f"nemo-trt-eval.{name}.questions", tests=str(len(questions)),
                           failures="0", errors="0", skipped=str(sum(q.correct < q.samples for q in questions)))
    for q in questions:
        tc = ET.SubElement(detail, "testcase", classname=f"eval.{name}.questions", name=q.id,
                           time=f"{sum(r.seconds for r in q.results):.3f}")
        if q.correct < q.samples:
            got = ", ".join(repr(r.extracted) for r in q.results[:4])
            ET.SubElement(tc, "skipped", message=f"{q.correct}/{q.samples} right; gold {q.gold!r}, got {got}"
                                                 + (f"; {q.truncated} truncated" if q.truncated else ""))
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode") + "\n"


def render(result: EvalResult, console: Console) -> None:
    from rich import box
    from rich.table import Table

    s, c = result.score, result.comparison
    pct = lambda v: f"{v * 100:.2f}"  # noqa: E731
    table = Table(box=box.SIMPLE_HEAD, show_header=False, pad_edge=False,
                  title=f"{result.dataset.benchmark or Path(result.dataset.path).name} ({result.dataset.task}), "
                        f"reasoning {result.settings['reasoning']}", title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("pass@1", f"{pct(s.pass_at_1)}  (95% CI {pct(s.ci_bootstrap[0])}-{pct(s.ci_bootstrap[1])} "
                            f"bootstrap over questions; Wilson {pct(s.ci_wilson[0])}-{pct(s.ci_wilson[1])})")
    table.add_row("samples", f"{s.correct_samples}/{s.total_samples} right: {s.questions} questions x "
                             f"K={s.samples_per_question}" + (f" ({result.resumed_samples} from the journal)"
                                                               if result.resumed_samples else ""))
    trunc = f"{s.truncated} samples hit max_tokens={result.settings['max_tokens']}"
    if s.truncated:
        trunc += (f" ({s.truncated_wrong} of them wrong); "
                  f"pass@1 without them {pct(s.pass_at_1_excluding_truncated or 0)}")
        trunc = f"[yellow]{trunc}[/]"
    table.add_row("truncated", trunc)
    table.add_row("no answer", f"{s.no_answer} samples had nothing to extract in the answer part")
    table.add_row("tokens", f"{s.output_tokens} generated in {result.wall_s:.1f} s")
    if c is not None:
        verdict = "[bold red]SIGNIFICANT DROP[/]" if c.significant_drop else "[green]no significant drop[/]"
        table.add_row("vs " + c.against, f"{c.reference}: {pct(c.reference_pass_at_1)}"
                      + (f" ±{c.tolerance_points:g}" if c.tolerance_points else "")
                      + f"; difference {c.difference_points:+.2f} points")
        table.add_row("test", f"{c.test}: p = {c.p_value:.4g} (alpha {c.alpha:g}) -> {verdict}")
        for note in c.notes:
            table.add_row("note", note)
    table.add_row("power", result.power.sentence)
    console.print(table)
