"""`nemo-trt selftest --gpu`: the GPU acceptance run (nemo_trt.selftest)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

from nemo_trt.errors import NemoTrtError

ASSUMED_GPU = ("NVIDIA H100 80GB HBM3", 81559, "9.0", "H100")


@click.command("selftest")
@click.option("--gpu", "gpu", is_flag=True,
              help="The GPU acceptance: real trtllm-build, real TensorRT-LLM backend, regress against the CPU golden.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where engines, repositories, logs and selftest.json go "
                   "[default: $NEMO_TRT_CACHE/selftest or ~/.cache/nemo-trt/selftest].")
@click.option("--golden", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The CPU-reference golden [default: the one shipped with nemo-trt, tests/golden/regress_tiny.json].")
@click.option("--layout", "layouts", multiple=True, metavar="NAME",
              help="Only this layout (repeatable): bf16-tp1, bf16-tp2, fp8-pp2.")
@click.option("--dry-run", is_flag=True, help="Print the layouts and every command it would run; run nothing.")
@click.option("--assume-gpus", type=click.IntRange(1, 8), default=None, metavar="N",
              help="With --dry-run on a machine without GPUs: plan for N GPUs like the local ones, else H100 80GB.")
@click.option("--force", is_flag=True, help="Run with another TensorRT-LLM version than the targeted one.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report on stdout (progress goes to stderr).")
def command(gpu, workdir, golden, layouts, dry_run, assume_gpus, force, as_json):
    """Acceptance test of a GPU machine: build, serve and regress-check the tiny model.

    \b
    On a machine with NVIDIA GPUs inside the NGC Triton TensorRT-LLM image, for each
    layout the GPUs allow (bf16-tp1; bf16-tp2 with 2 GPUs; fp8-pp2 with 2 FP8 GPUs):
      1. nemo-trt build of the tiny DeciLM with the real trtllm-build; the engine
         must have exactly the planned settings (no builder override we did not predict)
      2. the repository is checked against the backend contract and served by the
         real TensorRT-LLM backend
      3. nemo-trt regress check against the CPU-reference golden: greedy cases token
         for token (BF16), every case's properties; FP8: properties only
      4. the property suite under load (concurrency 4, every case twice)
    Exit code 0 only if every layout passes; WORKDIR/selftest.json holds the report.

    \b
    Examples:
      nemo-trt selftest --gpu
      nemo-trt selftest --gpu --layout bf16-tp1 --json
      docker run --gpus all --rm nemo-trt selftest --gpu
      nemo-trt selftest --gpu --dry-run --assume-gpus 2      # on any machine: what it would run
    """
    from nemo_trt import selftest as st
    from nemo_trt.console import console, err_console, print_json

    if not gpu:
        raise NemoTrtError("only the GPU acceptance exists: `nemo-trt selftest --gpu`",
                           "pass --gpu (CPU tests: pytest, see README)")
    if assume_gpus is not None and not dry_run:
        raise NemoTrtError("--assume-gpus only describes a run (--dry-run); a real run uses the GPUs it finds",
                           "add --dry-run, or drop --assume-gpus")
    from nemo_trt.build.tiny import cache_root

    workdir = (workdir or cache_root() / "selftest").absolute()
    if dry_run:
        info = _dry_run(workdir, golden, assume_gpus, layouts)
        if as_json:
            print_json(info)
        else:
            _render_dry_run(info, console)
        return

    from nemo_trt.build.engine import detect_toolchain
    from nemo_trt.build.tiny import tiny_checkpoint
    from nemo_trt.serve.launcher import find_tritonserver

    toolchain = detect_toolchain()
    try:
        install = find_tritonserver()
    except NemoTrtError:
        install = None
    st.preflight(toolchain, tritonserver=install, mpirun=shutil.which("mpirun"), force=force)
    golden_path = st.golden_path(golden)
    out = err_console if as_json else console
    out.print("[bold]tiny model[/]: trained once, cached")
    checkpoint = tiny_checkpoint(0)
    gpus = [st.Gpu(g.name, g.memory_mib, g.compute_capability, g.family) for g in toolchain.gpus]
    plan = _select(st.plan_selftest(workdir, gpus, golden=golden_path, checkpoint=checkpoint), layouts)
    report = st.run_selftest(plan, toolchain, on_event=lambda name, msg: out.print(f"[bold cyan]{name}[/] {msg}"))
    if as_json:
        print_json(report)
    else:
        _render_report(report, console)
    if not report["passed"]:
        sys.exit(1)


def _select(plan, names):
    if not names:
        return plan
    known = [lp.layout.name for lp in plan.layouts]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise NemoTrtError(f"no layout {', '.join(unknown)} for these GPUs", f"use one of {', '.join(known)}")
    plan.layouts = [lp for lp in plan.layouts if lp.layout.name in names]
    return plan


def _dry_run(workdir: Path, golden: Path | None, assume_gpus: int | None, names) -> dict:
    """The layouts, the profile each writes and every command, with the trtllm-build argv from the planner."""
    from nemo_trt import selftest as st
    from nemo_trt.build.engine import detect_toolchain, trtllm_build_command
    from nemo_trt.build.planner import make_plan
    from nemo_trt.build.profiles import parse_profile
    from nemo_trt.build.tiny import tiny_checkpoint_path, tiny_spec

    toolchain = detect_toolchain()
    found = [st.Gpu(g.name, g.memory_mib, g.compute_capability, g.family) for g in toolchain.gpus]
    if assume_gpus is not None:
        model = found[0] if found else st.Gpu(*ASSUMED_GPU)
        gpus, source = [model] * assume_gpus, f"assumed: {assume_gpus}x {model.name}"
    else:
        gpus, source = found, "detected" if found else "no GPU here (pass --assume-gpus N)"
    try:
        golden_path = st.golden_path(golden)
    except NemoTrtError:
        golden_path = Path(golden or st.GOLDEN_NAME)
    plan = _select(st.plan_selftest(workdir, gpus, golden=golden_path, checkpoint=tiny_checkpoint_path(0)), names)
    info = {"dry_run": True, **plan.to_dict(), "gpus_source": source}
    spec = tiny_spec()
    for lp, entry in zip(plan.layouts, info["layouts"]):
        build = make_plan(spec, parse_profile(lp.profile, str(lp.profile_path)), precision=lp.layout.precision)
        work = lp.dir / "work"
        entry["trtllm_build"] = trtllm_build_command(build, work / "checkpoint", work / "engines")
        entry["builder_overrides"] = build.builder_overrides
    try:
        st.preflight(toolchain, tritonserver=_tritonserver(), mpirun=shutil.which("mpirun"))
        info["real_run_here"] = "ok"
    except NemoTrtError as exc:
        info["real_run_here"] = f"refused: {exc.problem}"
    return info


def _tritonserver():
    from nemo_trt.serve.launcher import find_tritonserver

    try:
        return find_tritonserver()
    except NemoTrtError:
        return None


def _render_dry_run(info: dict, console) -> None:
    from rich.markup import escape

    console.print(f"[bold]nemo-trt selftest --gpu[/] (dry run; GPUs {info['gpus_source']}; nothing is written)")
    console.print(f"workdir {info['workdir']}\ngolden {info['golden']}")
    for entry in info["layouts"]:
        layout = entry["layout"]
        console.print(f"\n[bold cyan]{layout['name']}[/] {layout['precision']} TP{layout['tp']} PP{layout['pp']}: "
                      f"{layout['why']}")
        for step, text in entry["commands"].items():
            console.print(f"  {step}: {escape(text)}", soft_wrap=True)
        console.print(f"  trtllm-build: {escape(' '.join(entry['trtllm_build']))}", soft_wrap=True)
    console.print(f"\na real run on this machine: {info['real_run_here']}", soft_wrap=True)


def _render_report(report: dict, console) -> None:
    from rich.table import Table

    table = Table(title="nemo-trt selftest --gpu", title_justify="left")
    for col in ("layout", "build", "contract", "serve", "golden", "properties", "result"):
        table.add_column(col)

    def cell(step: dict | None) -> str:
        if step is None:
            return "-"
        counts = step.get("counts")
        text = f"{counts['passed']}/{counts['cases']}" if counts else ("ok" if step["passed"] else "FAILED")
        return text if step["passed"] else f"[red]{text}[/]"

    for entry in report["layouts"]:
        steps = entry.get("steps", {})
        table.add_row(entry["layout"]["name"], *(cell(steps.get(k)) for k in
                                                 ("build", "contract", "serve", "golden", "properties")),
                      "[green]passed[/]" if entry["passed"] else f"[red]FAILED[/] {entry.get('error', '')}")
    console.print(table)
    console.print(f"report: {report['plan']['workdir']}/selftest.json")
