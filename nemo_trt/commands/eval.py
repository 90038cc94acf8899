"""`nemo-trt eval`: pass@1 on the user's benchmark copy vs the model card or a baseline run."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from nemo_trt.console import console, err_console, print_json
from nemo_trt.errors import NemoTrtError


@click.command("eval")
@click.option("--dataset", "dataset_path", required=True, type=click.Path(dir_okay=False), metavar="FILE.jsonl",
              help='One JSON object per line: "question", "answer", optional "choices" (4, for mcq), optional "id".')
@click.option("--task", type=click.Choice(["math", "mcq", "exact"]), default=None,
              help="math: \\boxed{} answer checked with math-verify; mcq: letter A-D; exact: normalised text. "
                   "Default: the card benchmark's task when --benchmark is known, else required.")
@click.option("--reasoning", type=click.Choice(["on", "off"]), default="on", show_default=True,
              help="`detailed thinking on|off` system turn; also picks the card's sampling for the mode.")
@click.option("--samples", "-k", type=click.IntRange(1, 1024), default=1, show_default=True, metavar="K",
              help="Samples per question; pass@1 is averaged over them (the card: up to 16).")
@click.option("--url", default=None, metavar="HOST:PORT",
              help="Triton (grpc 127.0.0.1:8001, http 127.0.0.1:8000) or the OpenAI API (127.0.0.1:9000).")
@click.option("--protocol", type=click.Choice(["grpc", "http", "openai"]), default="grpc", show_default=True,
              help="Our Triton ensemble over gRPC or HTTP, or an OpenAI-compatible /v1/chat/completions.")
@click.option("--concurrency", type=click.IntRange(1, 1024), default=8, show_default=True,
              help="Requests in flight (in-flight batching on the server does the rest).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None, metavar="T",
              help="Generated-token budget per sample [default: the card's 32768]. Samples that hit it are "
                   "counted as truncated and reported apart.")
@click.option("--temperature", type=click.FloatRange(min=0), default=None,
              help="Override the mode's sampling (card: 0.6 with reasoning on, greedy off).")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=None, help="Override the mode's top_p.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Sample k is sent with seed SEED+k (sampled modes): reruns are reproducible where the backend is.")
@click.option("--benchmark", default=None, metavar="NAME",
              help="The card benchmark this file is (math500, aime25, gpqa_diamond): sets --task and the "
                   "default --expect. Default: guessed from the file name; `none` turns the guess off.")
@click.option("--expect", default=None, metavar="SCORE[±TOL]",
              help="Expected pass@1 in percent, e.g. 96.6±1.5 [default: the card's figure for --benchmark].")
@click.option("--baseline", type=click.Path(dir_okay=False), default=None, metavar="RESULT.json",
              help="Compare with an earlier run's --out (paired over questions) instead of a figure.")
@click.option("--tolerance", type=click.FloatRange(min=0), default=0.0, show_default=True, metavar="POINTS",
              help="With --baseline: a drop of up to this many points is acceptable.")
@click.option("--alpha", type=click.FloatRange(0, 0.5, min_open=True), default=0.05, show_default=True,
              help="One-sided significance level of the drop test.")
@click.option("--detect-drop", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              metavar="POINTS", help="Report how many samples it takes to detect a drop this large.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, metavar="RESULT.json",
              help="Summary [default: eval-<dataset>-reasoning-<mode>.json]; per-question report beside it "
                   "as RESULT.questions.json.")
@click.option("--journal", type=click.Path(dir_okay=False), default=None, metavar="FILE.jsonl",
              help="Sample cache for resuming [default: RESULT.journal.jsonl]; delete it to start over.")
@click.option("--junit", type=click.Path(dir_okay=False), default=None, metavar="J.xml", help="Write JUnit XML.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--timeout", type=click.FloatRange(min=1), default=3600.0, show_default=True, metavar="SECONDS",
              help="Per request (reasoning at 32k tokens is long).")
@click.option("--model", "served_model", default=None, metavar="NAME",
              help="--protocol openai: the served model name [default: the first of /v1/models].")
def command(dataset_path, task, reasoning, samples, url, protocol, concurrency, max_tokens, temperature, top_p, seed,
            benchmark, expect, baseline, tolerance, alpha, detect_drop, out, journal, junit, as_json, timeout,
            served_model):
    """Accuracy of a running deployment on a benchmark, against the model card or a baseline run.

    \b
    Prompts are the card's templates (all instructions in the user turn), sampling is the card's
    per mode unless overridden, and answers are read from the answer part only (Triton's
    answer_output / OpenAI message.content), never from the reasoning. pass@1 is averaged over
    K samples per question with a 95% interval; with --expect or --baseline a one-sided test
    decides, and the exit code is 1 only for a drop that is significant at --alpha.
    An interrupted run resumes from its journal: rerun the same command.

    \b
    Examples:
      nemo-trt eval --dataset math500.jsonl --reasoning on -k 4 --url 127.0.0.1:8001
      nemo-trt eval --dataset gpqa_diamond.jsonl --reasoning off --protocol openai --url 127.0.0.1:9000
      nemo-trt eval --dataset aime25.jsonl -k 16 --concurrency 64 --out aime25-new.json --junit eval.xml
      nemo-trt eval --dataset mine.jsonl --task exact --expect 80±2 --reasoning off --max-tokens 512
      nemo-trt eval --dataset math500.jsonl -k 4 --baseline math500-before.json --out math500-after.json
    """
    from nemo_trt import __version__
    from nemo_trt.model_facts import load_eval_facts, load_serving_facts
    from nemo_trt.serve.client import normalize_url
    from nemo_trt.serve.eval import compare, report, score, stats
    from nemo_trt.serve.eval.dataset import benchmark_name, load_dataset
    from nemo_trt.serve.eval.journal import Journal, run_key
    from nemo_trt.serve.eval.runner import run
    from nemo_trt.serve.eval.sampler import Sampling, make_sampler

    facts, serving = load_eval_facts(), load_serving_facts()
    if expect is not None and baseline is not None:
        raise NemoTrtError("--expect and --baseline both given", "compare with one: a figure or a baseline run")
    if benchmark and benchmark.lower() != "none":
        if benchmark not in facts.card_scores:
            raise NemoTrtError(f"--benchmark {benchmark!r} is not one the card publishes",
                               f"use one of {', '.join(facts.card_scores)}, or `none`")
    elif benchmark is None:
        benchmark = benchmark_name(dataset_path, list(facts.card_scores))
    else:
        benchmark = None
    card = facts.card_scores.get(benchmark) if benchmark else None
    if task is None:
        if card is None:
            raise NemoTrtError("--task is needed (the dataset is not named like a card benchmark)",
                               "pass --task math, mcq or exact")
        task = card.task
    dataset = load_dataset(dataset_path, task)

    defaults = serving.sampling[reasoning]
    sampling = Sampling(reasoning=reasoning, max_tokens=max_tokens or facts.max_sequence_length,
                        temperature=defaults.temperature if temperature is None else temperature,
                        top_p=defaults.top_p if top_p is None else top_p,
                        system_prompt=serving.system_prompt(reasoning))
    expectation = None
    if expect is not None:
        expectation = compare.parse_expect(expect)
    elif baseline is None and card is not None and card.for_mode(reasoning) is not None:
        expectation = compare.Expectation(score=float(card.for_mode(reasoning) or 0.0), tolerance=0.0,
                                          source=f"model card {benchmark} (reasoning {reasoning})")
    baseline_data = compare.load_baseline(baseline) if baseline else None

    target = normalize_url(url, "http" if protocol == "openai" else protocol) if protocol != "openai" \
        else (url or "127.0.0.1:9000")
    sampler = make_sampler(target, protocol, timeout, served_model)
    server = sampler.identity()
    settings = {"task": task, "reasoning": reasoning, "samples": samples, "max_tokens": sampling.max_tokens,
                "temperature": sampling.temperature, "top_p": None if sampling.greedy else sampling.top_p,
                "seed": seed, "protocol": protocol, "url": target, "concurrency": concurrency,
                "templates": facts.templates[task]}
    key = run_key(dataset=dataset.sha256, server=server, task=task, template=facts.templates[task],
                  reasoning=reasoning, system=sampling.system_prompt, max_tokens=sampling.max_tokens,
                  temperature=sampling.temperature, top_p=settings["top_p"], seed=seed)
    out = Path(out or f"eval-{Path(dataset_path).stem}-reasoning-{reasoning}.json")
    book = Journal(journal or out.with_name(out.stem + ".journal.jsonl"))

    started = time.perf_counter()
    listener = _Progress(len(dataset.questions), samples)
    with listener.progress:
        graded = run(dataset, lambda q: facts.user_prompt(task, q.question, list(q.choices) if q.choices else None),
                     sampler, sampling, samples=samples, concurrency=concurrency, journal=book, run=key,
                     base_seed=seed, listener=listener)
    wall = time.perf_counter() - started

    questions = score.question_reports(dataset, graded, samples)
    summary = score.score(questions)
    comparison = None
    if expectation is not None:
        comparison = compare.against_expectation(questions, expectation, alpha)
    elif baseline_data is not None:
        comparison = compare.against_baseline(questions, baseline_data, baseline, settings, dataset.sha256, alpha,
                                              tolerance)
    # A set answered all right (or all wrong) shows no variance: assume a 1-in-10 miss rate (p(1-p) = 0.09).
    note = stats.power_note(len(questions), samples, summary.within_question_variance or 0.09,
                            detect_drop / 100, alpha)
    result = report.EvalResult(
        nemo_trt_version=__version__,
        dataset=report.DatasetRef(path=str(dataset_path), sha256=dataset.sha256, task=task,
                                  questions=len(questions), benchmark=benchmark),
        server=server, settings=settings, score=summary, comparison=comparison,
        power=report.Power(drop_points=detect_drop, alpha=alpha, power=note.power, assumed_variance=note.sigma2,
                           samples_needed=note.samples_needed, questions_needed=note.questions_needed,
                           sentence=note.sentence(len(questions), samples)),
        wall_s=round(wall, 3), resumed_samples=listener.resumed, questions=report.compact(questions))
    detail = report.save(result, questions, out)
    if junit:
        from nemo_trt.atomic import atomic_write_text

        atomic_write_text(junit, report.to_junit(result, questions))
    if as_json:
        print_json(result.model_dump(mode="json") | {"passed": result.passed, "out": str(out),
                                                      "questions_report": str(detail), "journal": str(book.path)})
    else:
        report.render(result, console)
        console.print(f"wrote {out} and {detail}")
    if not result.passed:
        sys.exit(1)


class _Progress:
    """Rich progress: questions done, tokens/s, running score (the runner's listener)."""

    def __init__(self, questions: int, samples: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("[bold]eval[/]"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("questions  {task.fields[rate]}  {task.fields[score]}"),
                                 TimeElapsedColumn(), console=err_console, transient=True)
        self.task = self.progress.add_task("", total=questions, rate="", score="")
        self.start = time.perf_counter()
        self.generated = 0
        self.right = self.graded = self.resumed = 0

    def _refresh(self, advance: int = 0) -> None:
        elapsed = time.perf_counter() - self.start
        rate = f"{self.generated / elapsed:.1f} tok/s" if elapsed > 0 and self.generated else ""
        running = f"pass@1 {100 * self.right / self.graded:.1f}" if self.graded else ""
        self.progress.update(self.task, advance=advance, rate=rate, score=running)

    def tokens(self, n: int) -> None:  # worker threads: rich's Progress is thread-safe
        self.generated += n
        self._refresh()

    def sample_done(self, graded, question_complete: bool, resumed: bool) -> None:
        self.graded += 1
        self.right += int(graded.grade.correct)
        self.resumed += int(resumed)
        self._refresh(1 if question_complete else 0)
