"""`record` and `check` end to end: suite + server (+ golden) -> golden file / regression report."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from nemo_trt import __version__
from nemo_trt.errors import NemoTrtError
from nemo_trt.serve.client import Protocol
from nemo_trt.serve.regress.compare import (
    CaseVerdict, CheckResult, RegressionReport, compare_case, compatibility_notes, summarize_latency,
)
from nemo_trt.serve.regress.golden import Golden, Settings, SuiteRef
from nemo_trt.serve.regress.runner import (
    Outcome, family_tokenizer, load_tokenizer, prepare, read_server, run_cases, tokenizer_dir_from_configs,
)
from nemo_trt.serve.regress.suite import Suite

Progress = Callable[[Outcome], None] | None


def _tokenizer(explicit: str | Path | None, configs: dict):
    if explicit is not None:
        tok = load_tokenizer(explicit)
        if tok is None:
            raise NemoTrtError(f"no tokenizer.json at {explicit}", "pass the directory holding tokenizer.json")
        return tok
    # The repository names its tokenizer; usable when the server runs on this machine. Otherwise the
    # model family's Llama-3.1 tokenizer (same vocabulary) sizes padded prompts and decodes diffs.
    return load_tokenizer(tokenizer_dir_from_configs(configs)) or family_tokenizer()


def record(suite: Suite, url: str, protocol: Protocol = "grpc", *, concurrency: int = 1, timeout: float = 120.0,
           tokenizer: str | Path | None = None, cases: list[str] | None = None,
           labels: dict[str, str] | None = None, on_done: Progress = None) -> Golden:
    """Run the suite and return the golden (the caller writes it). Any failed case aborts the record."""
    server, configs = read_server(url, protocol, suite.model)
    tok = _tokenizer(tokenizer, configs)
    prepared = [prepare(suite, c, server, tok) for c in suite.select(cases)]
    outcomes = run_cases(prepared, url, protocol, concurrency=concurrency, timeout=timeout, on_done=on_done)
    failed = [o for o in outcomes if o.error]
    if failed:
        lines = "\n".join(f"  {o.prepared.case.name}: {o.error}" for o in failed)
        raise NemoTrtError(f"{len(failed)} case(s) failed while recording; no golden written:\n{lines}",
                           "fix the server or the suite and record again", exit_code=1)
    return Golden(
        nemo_trt_version=__version__,
        suite=SuiteRef(name=suite.name, sha256=suite.sha256, source=suite.source),
        settings=Settings(protocol=protocol, concurrency=concurrency),
        labels=dict(labels or {}),
        server=server,
        cases={o.prepared.case.name: o.record for o in outcomes},
    )


def merge_repeats(case, verdicts: list[CaseVerdict], server) -> CaseVerdict:
    """One verdict per case: the first failing run (else the first), plus run-to-run agreement."""
    first = next((v for v in verdicts if not v.passed), verdicts[0])
    if len(verdicts) == 1:
        return first
    first.seconds = max(v.seconds for v in verdicts)
    observed = [v.observed for v in verdicts if v.observed is not None]
    reproducible = case.sampling.greedy or (case.sampling.seed is not None and server.deterministic_sampling)
    if reproducible and len(observed) > 1:
        outputs = {tuple(o.token_ids or ()) or o.text for o in observed}
        first.checks.append(CheckResult(
            "repeats", len(outputs) == 1,
            f"{len(observed)} runs identical" if len(outputs) == 1
            else f"{len(outputs)} different outputs in {len(observed)} runs of a reproducible case"))
    failed = sum(not v.passed for v in verdicts)
    first.notes.append(f"{len(verdicts)} runs, {failed} failed")
    return first


def check(suite: Suite, url: str, golden: Golden | None, protocol: Protocol = "grpc", *, concurrency: int = 1,
          timeout: float = 120.0, latency_tolerance: float | None = None, tokenizer: str | Path | None = None,
          cases: list[str] | None = None, repeat: int = 1, on_done: Progress = None) -> RegressionReport:
    """`repeat` sends every case that many times (all in flight together with enough concurrency):
    each run is judged, and reproducible cases must also agree with each other under batching."""
    t0 = time.perf_counter()
    server, configs = read_server(url, protocol, suite.model)
    tok = _tokenizer(tokenizer, configs)
    prepared = [prepare(suite, c, server, tok) for c in suite.select(cases)]
    runs = [p for _ in range(max(1, repeat)) for p in prepared]
    outcomes = run_cases(runs, url, protocol, concurrency=concurrency, timeout=timeout, on_done=on_done)
    decode = tok.decode if tok is not None else None
    by_case: dict[str, list[CaseVerdict]] = {}
    for o in outcomes:
        case = o.prepared.case
        if o.record is None:  # the case failed: o.error says why
            v = CaseVerdict(case.name, "properties", error=o.error, seconds=o.seconds)
        else:
            v = compare_case(case, suite.checks(case), o.record, golden, server, decode)
            v.seconds = o.seconds
        by_case.setdefault(case.name, []).append(v)
    verdicts = [merge_repeats(suite.case(name), runs_of_case, server) for name, runs_of_case in by_case.items()]
    compat: list[str] = []
    latency = None
    if golden is not None:
        compat = compatibility_notes(golden.server, server)
        if golden.suite.sha256 != suite.sha256:
            compat.append(f"suite content differs from the one the golden was recorded with "
                          f"({golden.suite.source or golden.suite.name})")
        comparable, note = True, ""
        if golden.settings.concurrency != concurrency or golden.settings.protocol != protocol:
            comparable = False
            note = (f"golden recorded with {golden.settings.protocol} at concurrency {golden.settings.concurrency}, "
                    f"this run {protocol} at {concurrency}: latency reported, not judged")
        latency = summarize_latency(verdicts, latency_tolerance, comparable, note)
    return RegressionReport(suite=suite.name, server=server, golden_server=golden.server if golden else None,
                            verdicts=verdicts, latency=latency, compatibility=compat,
                            properties_only=golden is None, wall_s=time.perf_counter() - t0)
