"""`nemo-trt build`: one command from HF checkpoint to engines and Triton model repository."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("build")
@click.option("--gpu", "gpu", required=True, metavar="PROFILE|auto",
              help="GPU profile (h200x1, h100x2, a100x4, a100x8, a profile YAML) or 'auto' to detect local GPUs.")
@click.option("--checkpoint", "checkpoint", required=True, metavar="HF_DIR",
              help="Hugging Face checkpoint directory (for --dry-run, a built-in model name also works).")
@click.option("--output", "output", required=True, type=click.Path(file_okay=False, path_type=Path),
              metavar="WORKDIR", help="Work directory: plan.json, checkpoint/, engines/, repository/.")
@click.option("--precision", type=click.Choice(["bf16", "fp8"]), default=None,
              help="Weight precision (default: the profile's recommended one).")
@click.option("--variant", type=click.Choice(["throughput", "latency"]), default="throughput", show_default=True,
              help="Which of the profile's layouts to build.")
@click.option("--max-seq-len", type=int, default=None, help="Override max_seq_len (prompt + output tokens).")
@click.option("--max-batch-size", type=int, default=None, help="Override max_batch_size.")
@click.option("--until", type=click.Choice(["convert", "engine", "repo"]), default="repo", show_default=True,
              help="Last stage to run: convert (convert + verify, no GPU needed), engine, or repo.")
@click.option("--workers", type=int, default=None,
              help="Engines built in parallel (default: the world size; trtllm-build caps it at the GPU count).")
@click.option("--calib-device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where FP8 calibration of a BF16 checkpoint runs, one decoder layer at a time (cuda: one layer "
                   "on the GPU at a time, minutes instead of tens of minutes for Super-49B).")
@click.option("--gpus-per-node", type=click.IntRange(min=1), default=None, metavar="N",
              help="GPUs of one node, when the profile's GPUs span several nodes (a100x8 on 4-GPU nodes: TP4 "
                   "inside a node x PP2 across 2 nodes; `nemo-trt deploy k8s` renders the multi-node layout).")
@click.option("--dry-run", is_flag=True, help="Print the plan and every stage's exact command; run nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout (progress goes to stderr).")
@click.option("--force", is_flag=True,
              help="Replace a WORKDIR checkpoint made from other inputs (another layout or source), and build "
                   "even where the GPUs, TensorRT-LLM version or free disk do not match the plan. Current "
                   "stages are still reused; delete WORKDIR to start over.")
def command(gpu, checkpoint, output, precision, variant, max_seq_len, max_batch_size, until, workers, calib_device,
            gpus_per_node, dry_run, as_json, force):
    """Build TensorRT-LLM engines and a Triton model repository from an HF checkpoint.

    Stages: plan -> [calibrate: FP8 from a BF16 checkpoint, layer by layer]
    -> convert (HF -> TRT-LLM checkpoint, sharded TP x PP) -> verify
    -> engine (trtllm-build, one engine per rank) -> repo (Triton model
    repository). Every stage is cached in WORKDIR: a rerun skips what is
    complete and current, and a failed or interrupted stage leaves the earlier
    ones reusable and nothing half-written.

    Engines need the NGC Triton TensorRT-LLM container on the GPU machine (see
    the Dockerfile). Without it a real build refuses before doing any work;
    --dry-run works anywhere, and --until convert prepares the checkpoint on a
    CPU machine for a later build that reuses it.

    \b
    Examples:
      nemo-trt build --gpu h100x2 --checkpoint /models/super49b --output /deploy/super49b
      nemo-trt build --gpu auto --checkpoint /models/super49b --output /deploy/s49 --precision bf16
      nemo-trt build --gpu h200x1 --checkpoint llama-3.3-nemotron-super-49b-v1 --output /tmp/w --dry-run
      nemo-trt build --gpu h100x2 --checkpoint /models/super49b --output /deploy/s49 --until convert
      nemo-trt build --gpu a100x4 --checkpoint /models/super49b --output /deploy/a100 --dry-run --json
      nemo-trt build --gpu h100x2 --checkpoint /models/super49b --output /deploy/s49 --calib-device cuda
      nemo-trt build --gpu a100x8 --gpus-per-node 4 --checkpoint /models/super49b --output /deploy/a100x8-2x4
    """
    from nemo_trt.build.engine import detect_toolchain
    from nemo_trt.build.pipeline import BuildRequest, describe, prepare
    from nemo_trt.console import console, err_console, print_json

    request = BuildRequest(gpu=gpu, checkpoint=Path(checkpoint) if Path(checkpoint).exists() else checkpoint,
                           output=output, precision=precision, variant=variant, max_seq_len=max_seq_len,
                           max_batch_size=max_batch_size, until=until, force=force, workers=workers,
                           calib_device=calib_device, gpus_per_node=gpus_per_node)
    toolchain = detect_toolchain()
    prepared = prepare(request, toolchain=toolchain)
    if dry_run:
        info = describe(prepared, toolchain=toolchain)
        if as_json:
            print_json(info)
        else:
            _render_dry_run(prepared, info, console)
        return

    out = err_console if as_json else console
    summary = _run_with_progress(prepared, toolchain, out)
    if as_json:
        print_json(summary)
    else:
        _render_summary(summary, console)


def _render_dry_run(prepared, info: dict, console) -> None:
    from rich.markup import escape

    from nemo_trt.build.calibration_plan import RouteEstimate
    from nemo_trt.build.plan_report import render_plan

    render_plan(prepared.plan, console)
    console.print()
    console.print(f"[bold]Stages[/] (dry run, until {info['until']}; nothing is written)")
    for st in info["stages"]:
        console.print(f"\n[bold cyan]{st['stage']}[/]")
        if "command_text" in st:
            console.print("  " + escape(st["command_text"]), soft_wrap=True)
            console.print(f"  log: {st['log']}", soft_wrap=True)
        elif "call" in st:
            args = ", ".join(f"{k}={v!r}" for k, v in st.get("args", {}).items())
            console.print(f"  {st['call']}({escape(args)})", soft_wrap=True)
        if st["stage"] == "calibrate":
            console.print(f"  {st['prompts']} prompts, {st['tokens']:,} tokens ({escape(st['tokenization'])})")
            for est in st["estimates"]:
                console.print(f"  {escape(RouteEstimate.model_validate(est).summary())}", soft_wrap=True)
        for key, value in st.get("tensorrt_llm_parameters", {}).items():
            console.print(f"  tensorrt_llm parameter {key}: {value}")
        writes = st.get("writes", [])
        for path in writes[:4]:
            console.print(f"  writes {path}", soft_wrap=True)
        if len(writes) > 4:
            console.print(f"  … and {len(writes) - 4} more")
    console.print(f"\ntarget: TensorRT-LLM {info['target']['tensorrt_llm']} "
                  f"(TensorRT {info['target']['tensorrt']}) in {info['target']['container_image']}", soft_wrap=True)
    if "real_build_here" in info:
        console.print(f"a real build on this machine: {info['real_build_here']}", soft_wrap=True)


def _run_with_progress(prepared, toolchain, out) -> dict:
    import time

    from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

    from nemo_trt.build.pipeline import run_build

    with Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[stage]:<8}[/] {task.description}"),
                  TimeElapsedColumn(), console=out, transient=False) as progress:
        tasks: dict[str, TaskID] = {}
        started: dict[str, float] = {}

        def report(stage: str, message: str) -> None:
            for name, tid in tasks.items():
                if name != stage and not progress.tasks[tid].finished:
                    progress.update(tid, completed=1, total=1)
            if stage not in tasks:
                tasks[stage] = progress.add_task(message, total=None, stage=stage)
                started[stage] = time.monotonic()
            else:
                progress.update(tasks[stage], description=message)

        def build_line(line: str) -> None:
            if "engine" in tasks:
                progress.update(tasks["engine"], description=line[-100:])

        try:
            summary = run_build(prepared, toolchain=toolchain, report=report, on_build_line=build_line)
        finally:
            for tid in tasks.values():
                if not progress.tasks[tid].finished:
                    progress.stop_task(tid)
        for tid in tasks.values():
            progress.update(tid, completed=1, total=1)
    return summary


def _render_summary(summary: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"nemo-trt build: {summary['profile']} {summary['precision']} {summary['variant']}")
    table.add_column("stage")
    table.add_column("status")
    table.add_column("seconds", justify="right")
    for st in summary["stages"]:
        table.add_row(st["stage"], st["status"], f"{st['seconds']:.1f}")
    console.print(table)
    wd = summary["workdir"]
    console.print(f"work directory: {wd['root']}")
    if summary["until"] == "repo":
        console.print(f"serve it: nemo-trt serve --repo {wd['repository']}")
    elif summary["until"] == "convert":
        console.print("checkpoint converted and verified; on the GPU machine rerun the same command without "
                      "--until (same --output) and the engine build reuses it", soft_wrap=True)
