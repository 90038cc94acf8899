"""Capacity planning: how many replicas serve a request rate within a time-to-first-token SLO.

Two sources for what one replica sustains, best first:

1. A measured load point: the JSON a standard benchmark client writes, or `nemo-trt regress
   check --json`. Formats read (keys checked against their writers' source):
   - genai-perf `profile_export_genai_perf.json` (triton-inference-server/perf_analyzer,
     genai-perf/genai_perf/export_data/json_exporter.py + metrics/statistics.py @4cc7650c):
     top-level metric dicts `request_throughput` {unit: requests/sec, avg}, `time_to_first_token`
     {unit: ms, avg, p50, p90, p99, ...}, `input_sequence_length` / `output_sequence_length`
     {avg, ...}, and `input_config` (the CLI arguments: `concurrency`, `request_rate`).
   - AIPerf `profile_export_aiperf.json` (genai-perf's successor): the same metric dicts;
     `input_config.loadgen.concurrency` / `request_rate`.
   - `nemo-trt regress check --json` (nemo_trt.serve.regress.report.to_json): `wall_s` and
     per-case `output.timings.ttft_s` / `output.num_output_tokens`; a regression suite is not a
     load test, so such a point is flagged as weak.
   Several files = a sweep: the highest throughput whose TTFT p90 meets the SLO wins.
2. An estimate from the plan (roofline; every assumption is returned and printed): prefill is
   compute-bound, decode is bound by reading each rank's weights plus the active sequences' KV
   cache per step, at the plan's KV-limited concurrency.

replicas = ceil(rate / (per-replica requests/s x target utilization)); the utilization also
bounds queueing: with an SLO, TTFT ~ prefill time / (1 - utilization) (M/M/1-style), so the
utilization is capped at 1 - prefill/SLO.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from nemo_trt.build.planner import Plan
from nemo_trt.errors import NemoTrtError

DEFAULT_UTILIZATION = 0.8
MISMATCH_TOLERANCE = 0.25  # measured ISL/OSL this far from the target get a warning

# Peak figures per GPU family (NVIDIA datasheets: A100 80GB SXM, H100 SXM5, H200 SXM; dense tensor
# math, no sparsity). Efficiencies are assumptions, printed with every estimate.
GPU_PEAKS: dict[str, dict[str, float]] = {
    "A100": {"hbm_gb_s": 2039, "bf16_tflops": 312, "fp8_tflops": 0},
    "H100": {"hbm_gb_s": 3350, "bf16_tflops": 989, "fp8_tflops": 1979},
    "H200": {"hbm_gb_s": 4800, "bf16_tflops": 989, "fp8_tflops": 1979},
}
BANDWIDTH_EFFICIENCY = 0.6  # share of peak HBM bandwidth a decode step achieves
COMPUTE_EFFICIENCY = 0.4  # share of peak tensor FLOPS prefill achieves (MFU)


class LoadPoint(BaseModel):
    """What one replica sustained in one benchmark run."""

    source: str
    kind: Literal["genai-perf", "aiperf", "nemo-trt regress"]
    requests_per_s: float = Field(gt=0)
    ttft_ms_p90: float | None = None  # p90 when the file has it, else the mean
    ttft_ms_avg: float | None = None
    isl: float | None = None
    osl: float | None = None
    concurrency: int | None = None
    request_rate: float | None = None
    weak: bool = False  # not a load test (regress): throughput at short golden prompts


class Capacity(BaseModel):
    rate: float
    isl: int
    osl: int
    ttft_slo_ms: float | None
    basis: Literal["measured", "estimate"]
    per_replica_rps: float
    utilization: float
    replicas: int
    ttft_ms: float | None  # measured p90 at the chosen point, or the estimate at `utilization`
    concurrency_per_replica: float | None  # requests in flight per replica at the operating point
    load_point: LoadPoint | None = None
    assumptions: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


# ----------------------------------------------------------------------------- measured


def _stat(doc: dict, key: str, *fields: str) -> float | None:
    value = doc.get(key)
    if not isinstance(value, dict):
        return None
    for f in fields:
        if isinstance(value.get(f), (int, float)):
            return float(value[f])
    return None


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _mapping(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _benchmark_point(doc: dict, source: str) -> LoadPoint:
    config = _mapping(doc.get("input_config"))
    loadgen = _mapping(config.get("loadgen"))
    aiperf = "aiperf_version" in doc or bool(loadgen)
    rps = _stat(doc, "request_throughput", "avg")
    if not rps:
        raise NemoTrtError(f"{source}: request_throughput.avg is missing or zero",
                           "pass the profile_export_*.json of a completed run")
    concurrency = loadgen.get("concurrency", config.get("concurrency"))
    rate = loadgen.get("request_rate", config.get("request_rate"))
    return LoadPoint(
        source=source, kind="aiperf" if aiperf else "genai-perf", requests_per_s=rps,
        ttft_ms_p90=_stat(doc, "time_to_first_token", "p90", "avg"),
        ttft_ms_avg=_stat(doc, "time_to_first_token", "avg"),
        isl=_stat(doc, "input_sequence_length", "avg"), osl=_stat(doc, "output_sequence_length", "avg"),
        concurrency=int(concurrency) if isinstance(concurrency, (int, float)) else None,
        request_rate=float(rate) if isinstance(rate, (int, float)) else None,
    )


def _regress_point(doc: dict, source: str) -> LoadPoint:
    outputs = [_mapping(c.get("output")) for c in doc.get("cases", []) if isinstance(c, dict) and c.get("output")]
    wall = doc.get("wall_s")
    if not outputs or not isinstance(wall, (int, float)) or wall <= 0:
        raise NemoTrtError(f"{source}: a `nemo-trt regress` report without completed cases or wall_s",
                           "pass the --json output of a `nemo-trt regress check` run that completed")
    ttfts = [_mapping(o.get("timings"))["ttft_s"] * 1000 for o in outputs
             if _mapping(o.get("timings")).get("ttft_s") is not None]
    osl = [o["num_output_tokens"] for o in outputs if isinstance(o.get("num_output_tokens"), int)]
    isl = [o["num_input_tokens"] for o in outputs if isinstance(o.get("num_input_tokens"), int)]
    return LoadPoint(
        source=source, kind="nemo-trt regress", requests_per_s=len(outputs) / wall,
        ttft_ms_p90=_percentile(ttfts, 0.9) if ttfts else None,
        ttft_ms_avg=sum(ttfts) / len(ttfts) if ttfts else None,
        isl=sum(isl) / len(isl) if isl else None, osl=sum(osl) / len(osl) if osl else None, weak=True,
    )


def read_load_point(path: str | Path) -> LoadPoint:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise NemoTrtError(f"cannot read measurement {path}: {exc}",
                           "pass a genai-perf/AIPerf profile_export JSON or `nemo-trt regress check --json` output"
                           ) from exc
    if not isinstance(doc, dict):
        raise NemoTrtError(f"{path} is not a JSON object", "pass a profile_export JSON")
    if "request_throughput" in doc:
        return _benchmark_point(doc, str(path))
    if "cases" in doc and "wall_s" in doc:
        return _regress_point(doc, str(path))
    raise NemoTrtError(
        f"{path}: not a format nemo-trt reads (no request_throughput, no regress cases)",
        "pass genai-perf's profile_export_genai_perf.json, AIPerf's profile_export_aiperf.json, or the output of "
        "`nemo-trt regress check --json`",
    )


# ----------------------------------------------------------------------------- estimate


def _peaks(family: str, precision: str) -> tuple[float, float]:
    peaks = GPU_PEAKS.get(family)
    if peaks is None:
        raise NemoTrtError(f"no peak figures for GPU family {family!r} to estimate throughput",
                           "measure one replica (genai-perf) and pass --measured FILE")
    tflops = peaks["fp8_tflops"] if precision == "fp8" and peaks["fp8_tflops"] else peaks["bf16_tflops"]
    return peaks["hbm_gb_s"] * 1e9, tflops * 1e12


def estimate(plan: Plan, family: str, *, isl: int, osl: int) -> tuple[float, float, float, list[str]]:
    """(requests/s at full concurrency, prefill latency s, per-stream ITL s, assumptions)."""
    bandwidth, flops = _peaks(family, plan.precision)
    params = sum(r.params for r in plan.ranks)
    concurrency = max(1, plan.concurrent_sequences)
    ctx = isl + osl / 2  # mean context of a decoding sequence
    heaviest = max(plan.ranks, key=lambda r: r.weight_bytes + concurrency * ctx * r.kv_bytes_per_token)
    step_bytes = plan.pp * heaviest.weight_bytes + concurrency * ctx * heaviest.kv_bytes_per_token
    step_s = step_bytes / (bandwidth * BANDWIDTH_EFFICIENCY)
    prefill_gpu_s = 2 * params * isl / (plan.world_size * flops * COMPUTE_EFFICIENCY)
    prefill_latency_s = 2 * params * isl / (plan.tp * flops * COMPUTE_EFFICIENCY)
    rps = 1 / (prefill_gpu_s + osl * step_s / concurrency)
    assumptions = [
        f"{plan.gpu_name}: {bandwidth / 1e9:,.0f} GB/s HBM, {flops / 1e12:,.0f} dense {plan.precision.upper()} "
        "TFLOPS (datasheet)",
        f"decode reaches {BANDWIDTH_EFFICIENCY:.0%} of HBM bandwidth; each step reads the busiest rank's weights "
        f"({heaviest.weight_bytes / 1e9:.1f} GB{', once per PP micro-batch' if plan.pp > 1 else ''}) plus the KV "
        f"cache of {concurrency} sequences at a mean context of {ctx:,.0f} tokens -> {step_s * 1000:.1f} ms per step",
        f"prefill reaches {COMPUTE_EFFICIENCY:.0%} of peak FLOPS: 2 x {params / 1e9:.1f} B params x {isl} tokens "
        f"-> {prefill_latency_s * 1000:.0f} ms to first token on an idle replica",
        f"concurrency {concurrency} sequences per replica (the plan's KV-limited figure at {plan.input_len}+"
        f"{plan.output_len} tokens, max_batch_size {plan.build.max_batch_size})",
        "no KV-cache reuse credit (the shared system prompt makes real prefill cheaper)",
    ]
    return rps, prefill_latency_s, step_s, assumptions


# ----------------------------------------------------------------------------- replicas


def plan_capacity(plan: Plan, family: str, *, rate: float, isl: int, osl: int, ttft_slo_ms: float | None = None,
                  measured: list[LoadPoint] | None = None, utilization: float = DEFAULT_UTILIZATION) -> Capacity:
    if rate <= 0:
        raise NemoTrtError(f"--rate must be positive, got {rate}", "pass the target requests per second")
    if not 0 < utilization <= 1:
        raise NemoTrtError(f"--utilization must be in (0, 1], got {utilization}", "pass e.g. 0.8")
    if ttft_slo_ms is not None and ttft_slo_ms <= 0:
        raise NemoTrtError(f"--ttft-slo must be positive, got {ttft_slo_ms}", "pass milliseconds, e.g. 2000")
    warnings: list[str] = []
    if measured:
        return _from_measured(plan, rate=rate, isl=isl, osl=osl, ttft_slo_ms=ttft_slo_ms, points=measured,
                              utilization=utilization, warnings=warnings)
    rps, prefill_s, step_s, assumptions = estimate(plan, family, isl=isl, osl=osl)
    util = utilization
    if ttft_slo_ms is not None:
        slo_s = ttft_slo_ms / 1000
        if prefill_s >= slo_s:
            raise NemoTrtError(
                f"a {isl}-token prompt needs about {prefill_s * 1000:.0f} ms of prefill on an idle {plan.profile} "
                f"replica (TP{plan.tp}), more than the TTFT SLO of {ttft_slo_ms:.0f} ms: no replica count meets it",
                "relax --ttft-slo, plan for shorter prompts, or use a profile with more tensor parallelism; "
                "or measure a replica (--measured) if you expect faster prefill",
            )
        util = min(utilization, 1 - prefill_s / slo_s)
        assumptions.append(f"TTFT ~ prefill / (1 - utilization) (M/M/1-style queueing): utilization capped at "
                           f"{util:.2f} to stay within {ttft_slo_ms:.0f} ms")
    replicas = max(1, math.ceil(rate / (rps * util)))
    per_replica_rate = rate / replicas
    latency_s = prefill_s / (1 - per_replica_rate / rps) + osl * step_s
    return Capacity(
        rate=rate, isl=isl, osl=osl, ttft_slo_ms=ttft_slo_ms, basis="estimate", per_replica_rps=rps,
        utilization=util, replicas=replicas, ttft_ms=prefill_s / (1 - per_replica_rate / rps) * 1000,
        concurrency_per_replica=per_replica_rate * latency_s, assumptions=assumptions, warnings=warnings,
    )


def _from_measured(plan: Plan, *, rate: float, isl: int, osl: int, ttft_slo_ms: float | None,
                   points: list[LoadPoint], utilization: float, warnings: list[str]) -> Capacity:
    eligible = points
    if ttft_slo_ms is not None:
        eligible = [p for p in points if p.ttft_ms_p90 is not None and p.ttft_ms_p90 <= ttft_slo_ms]
        if not eligible:
            seen = ", ".join(f"{p.ttft_ms_p90:.0f} ms at {p.requests_per_s:.2f} req/s" for p in points
                             if p.ttft_ms_p90 is not None) or "no TTFT in the files"
            raise NemoTrtError(
                f"no measured load point meets the TTFT SLO of {ttft_slo_ms:.0f} ms (p90: {seen})",
                "measure at lower concurrency or request rate (genai-perf --concurrency N) and pass those files too",
            )
    best = max(eligible, key=lambda p: p.requests_per_s)
    for name, want, got in (("ISL", isl, best.isl), ("OSL", osl, best.osl)):
        if got is not None and abs(got - want) > MISMATCH_TOLERANCE * want:
            warnings.append(f"{best.source} was measured at {name} {got:.0f}, you plan for {want}: throughput "
                            "scales with the tokens per request; measure at the planned lengths")
    if best.weak:
        warnings.append(f"{best.source} is a regression run (short golden prompts, concurrency of the suite), not a "
                        "load test: treat its throughput as a rough lower bound and measure with genai-perf")
    replicas = max(1, math.ceil(rate / (best.requests_per_s * utilization)))
    assumptions = [
        f"one replica sustains {best.requests_per_s:.3f} req/s with TTFT p90 "
        f"{best.ttft_ms_p90 if best.ttft_ms_p90 is not None else float('nan'):.0f} ms ({best.kind}, {best.source})",
        f"replicas run at {utilization:.0%} of that throughput (headroom for bursts and for the autoscaler's lag)",
    ]
    return Capacity(
        rate=rate, isl=isl, osl=osl, ttft_slo_ms=ttft_slo_ms, basis="measured", per_replica_rps=best.requests_per_s,
        utilization=utilization, replicas=replicas, ttft_ms=best.ttft_ms_p90,
        concurrency_per_replica=best.concurrency, load_point=best, assumptions=assumptions, warnings=warnings,
    )

