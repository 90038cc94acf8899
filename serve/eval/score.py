"""Fold graded samples into per-question results and the run's score (with its interval)."""
from __future__ import annotations

from pydantic import BaseModel

from nemo_trt.serve.eval import stats
from nemo_trt.serve.eval.dataset import Dataset
from nemo_trt.serve.eval.runner import Graded


class SampleReport(BaseModel):
    sample: int
    extracted: str | None
    correct: bool
    output_tokens: int | None
    truncated: bool
    finish_reason: str | None
    seconds: float


class QuestionReport(BaseModel):
    id: str
    gold: str
    correct: int
    samples: int
    truncated: int
    no_answer: int
    score: float
    results: list[SampleReport]


class Score(BaseModel):
    pass_at_1: float  # fraction
    questions: int
    samples_per_question: int
    correct_samples: int
    total_samples: int
    ci_level: float
    ci_bootstrap: tuple[float, float]  # percentile bootstrap over questions (seeded)
    ci_wilson: tuple[float, float]  # Wilson on questions-as-trials at the observed pass@1 (exact at K=1)
    truncated: int  # samples cut off at max_tokens
    truncated_wrong: int  # of those, graded wrong: what a larger budget might recover
    no_answer: int  # samples with nothing extractable in the answer part
    pass_at_1_excluding_truncated: float | None
    output_tokens: int
    within_question_variance: float


def question_reports(dataset: Dataset, graded: dict[tuple[str, int], Graded], samples: int) -> list[QuestionReport]:
    out = []
    for q in dataset.questions:
        rows = [graded[(q.id, k)] for k in range(samples)]
        results = [SampleReport(sample=g.record.sample, extracted=g.grade.extracted, correct=g.grade.correct,
                                output_tokens=g.record.output_tokens, truncated=g.truncated,
                                finish_reason=g.record.finish_reason, seconds=g.record.seconds) for g in rows]
        correct = sum(r.correct for r in results)
        out.append(QuestionReport(id=q.id, gold=q.answer, correct=correct, samples=samples,
                                  truncated=sum(r.truncated for r in results),
                                  no_answer=sum(r.extracted is None for r in results),
                                  score=correct / samples, results=results))
    return out


def score(questions: list[QuestionReport], confidence: float = 0.95, seed: int = 0) -> Score:
    correct = [q.correct for q in questions]
    ks = [q.samples for q in questions]
    p = stats.pass_at_1(correct, ks)
    n = len(questions)
    truncated = [r for q in questions for r in q.results if r.truncated]
    kept = [(sum(r.correct for r in q.results if not r.truncated), sum(not r.truncated for r in q.results))
            for q in questions]
    kept = [(c, k) for c, k in kept if k]
    return Score(
        pass_at_1=p, questions=n, samples_per_question=ks[0] if ks else 0,
        correct_samples=sum(correct), total_samples=sum(ks), ci_level=confidence,
        ci_bootstrap=stats.bootstrap_interval([q.score for q in questions], confidence, seed=seed),
        ci_wilson=stats.wilson_interval(round(p * n, 9), n, confidence) if n else (0.0, 1.0),
        truncated=len(truncated), truncated_wrong=sum(not r.correct for r in truncated),
        no_answer=sum(q.no_answer for q in questions),
        pass_at_1_excluding_truncated=(stats.pass_at_1([c for c, _ in kept], [k for _, k in kept])
                                       if kept and truncated else None),
        output_tokens=sum(r.output_tokens or 0 for q in questions for r in q.results),
        within_question_variance=stats.within_question_variance(correct, ks),
    )
