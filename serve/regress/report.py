"""Render a RegressionReport: a rich table for people, JSON for scripts, JUnit XML for CI."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from nemo_trt.atomic import atomic_write_text
from nemo_trt.serve.regress.compare import LATENCY_METRICS, CaseVerdict, RegressionReport

_METRIC_LABEL = {"ttft_s": "TTFT", "itl_s": "ITL", "total_s": "total"}


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _verdict_dict(v: CaseVerdict) -> dict[str, Any]:
    return {
        "name": v.name,
        "passed": v.passed,
        "mode": v.mode,
        "error": v.error,
        "seconds": round(v.seconds, 4),
        "checks": [{"name": c.name, "passed": c.passed, "message": c.message} for c in v.checks],
        "divergence": None if v.divergence is None else {
            "position": v.divergence.position, "unit": v.divergence.unit,
            "context": v.divergence.context, "expected": v.divergence.expected, "got": v.divergence.got,
            "context_text": v.divergence.context_text, "expected_text": v.divergence.expected_text,
            "got_text": v.divergence.got_text,
            "expected_len": v.divergence.expected_len, "got_len": v.divergence.got_len,
        },
        "latency_ratios": {k: round(r, 4) for k, r in v.latency_ratios.items()},
        "notes": v.notes,
        "output": None if v.observed is None else {
            "num_output_tokens": v.observed.num_output_tokens,
            "finish_reason": v.observed.finish_reason,
            "text": v.observed.text,
            "token_ids": v.observed.token_ids,
            "timings": v.observed.timings.model_dump(),
        },
    }


def to_json(report: RegressionReport) -> dict[str, Any]:
    lat = report.latency
    return {
        "suite": report.suite,
        "passed": report.passed,
        "counts": report.counts,
        "properties_only": report.properties_only,
        "wall_s": round(report.wall_s, 3),
        "server": report.server.model_dump(exclude={"manifest"}),
        "golden_server": (None if report.golden_server is None
                          else report.golden_server.model_dump(exclude={"manifest"})),
        "compatibility": report.compatibility,
        "latency": None if lat is None else {
            "median_ratios": {k: (None if r is None else round(r, 4)) for k, r in lat.ratios.items()},
            "tolerance_pct": lat.tolerance_pct, "passed": lat.passed, "failed_metrics": lat.failed_metrics(),
            "comparable": lat.comparable, "note": lat.note,
        },
        "cases": [_verdict_dict(v) for v in report.verdicts],
    }


def to_junit(report: RegressionReport) -> str:
    """One <testcase> per suite case (plus one for latency when a tolerance is set)."""
    suite = ET.Element("testsuite", name=f"nemo-trt-regress.{report.suite}")
    failures = errors = 0
    for v in report.verdicts:
        case = ET.SubElement(suite, "testcase", classname=f"regress.{report.suite}", name=v.name,
                             time=f"{v.seconds:.3f}")
        if v.error:
            errors += 1
            el = ET.SubElement(case, "error", message=v.error.splitlines()[0][:200], type="RequestError")
            el.text = v.failure_message()
        elif not v.passed:
            failures += 1
            first = v.failures[0]
            el = ET.SubElement(case, "failure", message=f"{first.name}: {first.message}".splitlines()[0][:200],
                               type=f"{first.name}Mismatch")
            el.text = v.failure_message()
        out = [f"mode: {v.mode}"] + [f"note: {n}" for n in v.notes]
        out += [f"{c.name}: {'ok' if c.passed else 'FAIL'} {c.message}" for c in v.checks]
        if v.latency_ratios:
            out.append("latency ratios: "
                       + ", ".join(f"{_METRIC_LABEL[k]} {r:.2f}x" for k, r in v.latency_ratios.items()))
        ET.SubElement(case, "system-out").text = "\n".join(out)
    lat = report.latency
    if lat is not None and lat.tolerance_pct is not None:
        case = ET.SubElement(suite, "testcase", classname=f"regress.{report.suite}", name="latency", time="0")
        bad = lat.failed_metrics()
        summary = ", ".join(f"{_METRIC_LABEL[m]} {_ratio(r)}" for m, r in lat.ratios.items())
        if bad:
            failures += 1
            ET.SubElement(case, "failure", type="LatencyRegression",
                          message=f"median latency ratio above {1 + lat.tolerance_pct / 100:.2f}x for "
                                  f"{', '.join(_METRIC_LABEL[m] for m in bad)}").text = summary
        ET.SubElement(case, "system-out").text = summary
    suite.set("tests", str(len(suite.findall("testcase"))))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("time", f"{report.wall_s:.3f}")
    props = ET.Element("properties")
    for key, value in (("server", report.server.short()), ("url", report.server.url),
                       ("golden_server", report.golden_server.short() if report.golden_server else "none"),
                       *[(f"compatibility.{i}", n) for i, n in enumerate(report.compatibility)]):
        ET.SubElement(props, "property", name=key, value=value)
    suite.insert(0, props)
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(report: RegressionReport, path) -> None:
    atomic_write_text(path, to_junit(report))


def print_report(report: RegressionReport, console: Console) -> None:
    title = f"regress check: suite {report.suite} against {report.server.url} ({report.server.short()})"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col, kw in (("case", {"no_wrap": True}), ("result", {"no_wrap": True}), ("compared", {"no_wrap": True}),
                    ("output", {"no_wrap": True}), ("TTFT", {"justify": "right", "no_wrap": True}),
                    ("ITL", {"justify": "right", "no_wrap": True}), ("total", {"justify": "right", "no_wrap": True})):
        table.add_column(col, **kw)
    for v in report.verdicts:
        obs = v.observed
        result = "[green]pass[/]" if v.passed else ("[red]ERROR[/]" if v.error else "[red]FAIL[/]")
        if obs is None:
            output = "-"
        else:
            tokens = "?" if obs.num_output_tokens is None else obs.num_output_tokens
            output = f"{tokens} {obs.finish_reason}"
        table.add_row(v.name, result, v.mode, output, *[_ratio(v.latency_ratios.get(m)) for m in LATENCY_METRICS])
    console.print(table)
    for note in report.compatibility:
        console.print(f"[yellow]note:[/] {note}")
    for v in report.verdicts:
        for note in v.notes:
            console.print(f"[yellow]note:[/] {v.name}: {note}")
    for v in report.verdicts:
        if not v.passed:
            console.print(f"\n[bold red]{v.name}[/] failed:")
            console.print(v.failure_message(), markup=False, highlight=False)
    lat = report.latency
    if lat is not None:
        ratios = ", ".join(f"{_METRIC_LABEL[m]} {_ratio(r)}" for m, r in lat.ratios.items())
        tol = "report only" if lat.tolerance_pct is None else f"tolerance {lat.tolerance_pct:g}%"
        console.print(f"latency vs golden (median ratio, >1 = slower; {tol}): {ratios}"
                      + (f" [yellow]({lat.note})[/]" if lat.note else ""))
        if not lat.passed:
            console.print(f"[red]latency regression:[/] {', '.join(lat.failed_metrics())}")
    c = report.counts
    colour = "green" if report.passed else "red"
    console.print(f"[bold {colour}]{'PASSED' if report.passed else 'FAILED'}[/]: {c['passed']}/{c['cases']} cases "
                  f"passed in {report.wall_s:.1f} s" + (" (properties only)" if report.properties_only else ""))
