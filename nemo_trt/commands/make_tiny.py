"""`nemo-trt make-tiny`: write (and train) the tiny DeciLM fixture checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # pragma: no cover
    from rich.progress import Progress, TaskID


@click.command("make-tiny")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the weights init and the training run.")
@click.option("--no-train", is_flag=True, help="Write the seeded random init (seconds) instead of the trained model.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists (swapped in only once complete).")
@click.option("--eval-data", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Also write the tiny model's eval datasets (math.jsonl, mcq.jsonl) to DIR, for `nemo-trt eval`.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
def command(out: Path, seed: int, no_train: bool, force: bool, eval_data: Path | None, as_json: bool):
    """Write the tiny DeciLM checkpoint (every Nemotron-NAS block kind) to OUT.

    The model has 8 layers at hidden size 256 (8 query heads; 8, 2 and 1 KV
    heads; no-op and linear attention; MLPs of width 1024/512/256; no-op and
    linear FFN), the full 128,256-token Llama-3.1 tokenizer with the
    Super-49B v1 chat template, llama3 RoPE scaling and sharded BF16
    safetensors. A seeded training run (two to three minutes on two CPU cores)
    teaches it the response protocol: with `detailed thinking on` it answers
    `<think>\\n...\\n</think>\\n\\n...` and with `off` directly, ending the turn
    with <|eot_id|>; questions with words it never saw get "Sorry, I do not
    know that." in the same protocol. It also calls a get_weather tool in the
    Super v1 format (`<TOOLCALL>[get_weather(city="Paris")]</TOOLCALL>`) and answers
    from the tool's result, and answers the card's math and multiple-choice eval
    prompts with `\\boxed{}` (the datasets: --eval-data). The trained result is cached
    ($NEMO_TRT_CACHE or ~/.cache/nemo-trt) and copied to OUT, so later calls take seconds.

    \b
    Examples:
      nemo-trt make-tiny /tmp/tiny
      nemo-trt make-tiny /tmp/tiny --seed 1 --force
      nemo-trt make-tiny /tmp/tiny-random --no-train --json
      nemo-trt make-tiny /tmp/tiny --eval-data /tmp/tiny-eval
    """
    from nemo_trt.build.tiny import (
        EVAL_TASKS,
        copy_checkpoint,
        tiny_checkpoint,
        weights_sha256,
        write_eval_jsonl,
        write_tiny_checkpoint,
    )
    from nemo_trt.console import console, err_console, print_json
    from nemo_trt.errors import NemoTrtError

    if out.exists() and not force:
        raise NemoTrtError(f"{out} already exists", "pass --force to replace it, or choose another directory")
    progress_console = err_console if as_json else console
    if no_train:
        summary = write_tiny_checkpoint(out, seed, train=False, force=force)
        source = None
    else:
        with _training_progress(progress_console) as report:
            source = tiny_checkpoint(seed, progress=report)
        copy_checkpoint(source, out, force=force)
        summary = {"path": str(out.absolute()), "seed": seed, "trained": True}
    import json

    meta = json.loads((out / "nemo_trt_tiny.json").read_text())
    summary.update(meta.get("stats", {}))
    summary["cache"] = str(source) if source else None
    summary["files"] = sorted(p.name for p in out.iterdir())
    summary["weights_sha256"] = weights_sha256(out)
    if eval_data is not None:
        summary["eval_data"] = {task: str(write_eval_jsonl(task, eval_data / f"{task}.jsonl").absolute())
                                for task in EVAL_TASKS}
    if as_json:
        print_json(summary)
        return
    console.print(f"[bold green]wrote[/] {summary['path']} ({'trained' if summary['trained'] else 'random init'}, "
                  f"seed {seed})", soft_wrap=True)
    if summary.get("final_loss") is not None:
        console.print(f"training: {summary['steps']} steps, final loss {summary['final_loss']}, "
                      f"{summary['seconds']} s")
    if source:
        console.print(f"cache: {source}", soft_wrap=True)
    for task, path in summary.get("eval_data", {}).items():
        console.print(f"eval data ({task}): {path}", soft_wrap=True)


class _training_progress:
    """A rich progress bar fed by the training loop (only shown when training really runs)."""

    def __init__(self, console):
        self.console = console
        self.bar: tuple[Progress, TaskID] | None = None  # made on the first report

    def __enter__(self):
        def report(step: int, total: int, loss: float) -> None:
            if self.bar is None:
                from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

                progress = Progress(TextColumn("training tiny model"), BarColumn(),
                                    TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.3f}"),
                                    TimeElapsedColumn(), console=self.console)
                progress.start()
                self.bar = (progress, progress.add_task("train", total=total, loss=float("nan")))
            progress, task = self.bar
            progress.update(task, completed=step, loss=loss)

        return report

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar[0].stop()
