"""Run the missing samples of an evaluation, journal each as it finishes, grade in the main thread.

Requests run on a thread pool (`concurrency` in flight: the server's in-flight batching does the
rest); everything that touches the journal or math-verify (signal-based timeouts) stays in the
calling thread. Ctrl-C cancels the requests in flight on the server and leaves the journal
holding every finished sample, so the next run picks up exactly where this one stopped.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Protocol

from nemo_trt.serve.eval.dataset import Dataset, Question
from nemo_trt.serve.eval.grade import Grade, grade
from nemo_trt.serve.eval.journal import Journal, SampleRecord
from nemo_trt.serve.eval.sampler import Sample, Sampling, TokenCallback


class SamplerLike(Protocol):
    def sample(self, user_prompt: str, sampling: Sampling, seed: int | None, on_tokens: TokenCallback) -> Sample: ...


class Cancelled(Exception):
    """Raised inside a worker's token callback to abandon its request (the stream is closed)."""


@dataclass(frozen=True)
class Graded:
    record: SampleRecord
    grade: Grade

    @property
    def truncated(self) -> bool:
        return self.record.finish_reason == "length"


class Listener(Protocol):
    def tokens(self, n: int) -> None: ...

    def sample_done(self, graded: Graded, question_complete: bool, resumed: bool) -> None: ...


def seed_for(sample: int, base_seed: int, sampling: Sampling) -> int | None:
    """Sample k uses seed base+k: reruns reproduce on backends with deterministic seeded sampling."""
    return None if sampling.greedy else base_seed + sample


def run(dataset: Dataset, prompts: Callable[[Question], str], sampler: SamplerLike, sampling: Sampling, *,
        samples: int, concurrency: int, journal: Journal, run: str, base_seed: int = 0,
        listener: Listener | None = None) -> dict[tuple[str, int], Graded]:
    """Every (question, sample) of the run graded, from the journal where it was already done."""
    done = journal.load(run)
    by_id = {q.id: q for q in dataset.questions}
    results: dict[tuple[str, int], Graded] = {}
    remaining = {q.id: samples for q in dataset.questions}

    def finish(record: SampleRecord, resumed: bool) -> None:
        question = by_id[record.question_id]
        graded = Graded(record, grade(dataset.task, record.answer, question.answer))
        results[(record.question_id, record.sample)] = graded
        remaining[record.question_id] -= 1
        if listener:
            listener.sample_done(graded, remaining[record.question_id] == 0, resumed)

    todo: list[tuple[Question, int]] = []
    for q in dataset.questions:
        for k in range(samples):
            if (q.id, k) in done:
                finish(done[(q.id, k)], resumed=True)
            else:
                todo.append((q, k))
    if not todo:
        return results

    stop = threading.Event()

    def on_tokens(n: int) -> None:
        if stop.is_set():
            raise Cancelled()
        if listener:
            listener.tokens(n)

    def work(question: Question, k: int) -> SampleRecord:
        got = sampler.sample(prompts(question), sampling, seed_for(k, base_seed, sampling), on_tokens)
        return SampleRecord(run, question.id, k, got.answer, got.reasoning_chars, got.output_tokens,
                            got.finish_reason, round(got.seconds, 4))

    pending = iter(todo)
    in_flight: set[Future] = set()
    with journal.open() as out, ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="eval") as pool:
        try:
            for q, k in pending:
                in_flight.add(pool.submit(work, q, k))
                if len(in_flight) >= concurrency:
                    break
            while in_flight:
                finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    record = future.result()  # a failed request stops the run; the journal keeps the rest
                    out.append(record)
                    finish(record, resumed=False)
                    nxt = next(pending, None)
                    if nxt is not None:
                        in_flight.add(pool.submit(work, *nxt))
        except BaseException:
            stop.set()
            for future in in_flight:
                future.cancel()
            raise
    return results
