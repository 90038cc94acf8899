"""Capacity planning (nemo_trt.build.capacity, `nemo-trt plan --rate`): replicas from measured or estimated
throughput."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from nemo_trt.build.capacity import estimate, plan_capacity, read_load_point
from nemo_trt.build.planner import make_plan
from nemo_trt.build.profiles import load_profile
from nemo_trt.build.spec import ModelSpec
from nemo_trt.cli import main
from nemo_trt.errors import NemoTrtError
from nemo_trt.model_facts import DEFAULT_MODEL, resolve_model
from nemo_trt.serve.regress.compare import CaseVerdict, RegressionReport
from nemo_trt.serve.regress.golden import CaseRecord, ServerIdentity, Timings
from nemo_trt.serve.regress.report import to_json

FIXTURES = Path(__file__).parent / "fixtures" / "capacity"


@pytest.fixture(scope="module")
def h100_plan():
    spec = ModelSpec.from_path(resolve_model(DEFAULT_MODEL))
    return make_plan(spec, load_profile("h100x2"), input_len=2000, output_len=1000)


def test_genai_perf_and_aiperf_files_are_read():
    point = read_load_point(FIXTURES / "genai_perf_c16.json")
    assert (point.kind, point.requests_per_s, point.ttft_ms_p90, point.concurrency) == ("genai-perf", 0.9, 240.0, 16)
    assert (point.isl, point.osl) == (2000.0, 1000.0)
    ai = read_load_point(FIXTURES / "aiperf_c32.json")
    assert (ai.kind, ai.requests_per_s, ai.ttft_ms_p90, ai.concurrency) == ("aiperf", 1.7, 610.0, 32)


def test_regress_report_is_a_weak_load_point(tmp_path, h100_plan):
    verdicts = [CaseVerdict(name=f"c{i}", mode="properties", observed=CaseRecord(
        prompt_sha256="x", prompt_chars=10, sampling="greedy", max_tokens=64, num_output_tokens=40 + i,
        timings=Timings(ttft_s=0.1 * (i + 1), total_s=2.0))) for i in range(10)]
    report = RegressionReport(suite="default", server=ServerIdentity(), golden_server=None, verdicts=verdicts,
                              latency=None, wall_s=5.0)
    path = tmp_path / "regress.json"
    path.write_text(json.dumps(to_json(report)))
    point = read_load_point(path)
    assert point.kind == "nemo-trt regress" and point.weak
    assert point.requests_per_s == pytest.approx(2.0) and point.ttft_ms_p90 == pytest.approx(910.0)
    cap = plan_capacity(h100_plan, "H100", rate=10, isl=2000, osl=1000, measured=[point])
    assert cap.replicas == math.ceil(10 / (2.0 * 0.8))
    assert any("not a load test" in w for w in cap.warnings) and any("OSL" in w for w in cap.warnings)


def test_sweep_picks_the_fastest_point_within_the_slo(h100_plan):
    points = [read_load_point(FIXTURES / n) for n in ("genai_perf_c16.json", "genai_perf_c64.json", "aiperf_c32.json")]
    loose = plan_capacity(h100_plan, "H100", rate=10, isl=2000, osl=1000, ttft_slo_ms=2000, measured=points)
    assert loose.load_point.concurrency == 64 and loose.replicas == math.ceil(10 / (2.6 * 0.8)) == 5
    tight = plan_capacity(h100_plan, "H100", rate=10, isl=2000, osl=1000, ttft_slo_ms=700, measured=points)
    assert tight.load_point.concurrency == 32 and tight.replicas == math.ceil(10 / (1.7 * 0.8)) == 8
    assert tight.basis == "measured" and not tight.warnings
    with pytest.raises(NemoTrtError, match="no measured load point meets") as err:
        plan_capacity(h100_plan, "H100", rate=10, isl=2000, osl=1000, ttft_slo_ms=100, measured=points)
    assert "lower concurrency" in err.value.fix


def test_estimate_states_its_assumptions_and_scales_with_rate(h100_plan):
    rps, prefill_s, step_s, assumptions = estimate(h100_plan, "H100", isl=2000, osl=1000)
    assert rps > 0 and 0 < prefill_s < 1 and step_s > 0
    assert any("HBM" in a for a in assumptions) and any("prefill" in a for a in assumptions)
    one = plan_capacity(h100_plan, "H100", rate=1, isl=2000, osl=1000)
    many = plan_capacity(h100_plan, "H100", rate=100, isl=2000, osl=1000)
    assert one.basis == "estimate" and many.replicas == math.ceil(100 / (rps * 0.8)) > one.replicas >= 1
    # a tight SLO lowers the utilization each replica may run at, so more replicas
    slo = plan_capacity(h100_plan, "H100", rate=100, isl=2000, osl=1000, ttft_slo_ms=prefill_s * 1000 * 2)
    assert slo.utilization == pytest.approx(0.5) and slo.replicas > many.replicas
    assert slo.ttft_ms <= prefill_s * 1000 * 2 + 1e-6
    with pytest.raises(NemoTrtError, match="no replica count meets it"):
        plan_capacity(h100_plan, "H100", rate=1, isl=2000, osl=1000, ttft_slo_ms=prefill_s * 1000 / 2)


def test_faster_gpus_need_fewer_replicas():
    spec = ModelSpec.from_path(resolve_model(DEFAULT_MODEL))
    caps = {name: plan_capacity(make_plan(spec, load_profile(name), input_len=2000, output_len=1000),
                                load_profile(name).gpu.family, rate=50, isl=2000, osl=1000)
            for name in ("h200x1", "h100x2", "a100x4")}
    assert caps["h100x2"].per_replica_rps > caps["a100x4"].per_replica_rps


def test_plan_cli_capacity(capsys):
    assert main(["plan", "--gpu", "h100x2", "--rate", "20", "--isl", "2000", "--osl", "1000",
                 "--measured", str(FIXTURES / "genai_perf_c16.json"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["input_len"] == 2000 and data["capacity"]["replicas"] == math.ceil(20 / (0.9 * 0.8))
    assert main(["plan", "--gpu", "h100x2", "--rate", "20"]) == 0
    out = capsys.readouterr().out
    assert "replica(s)" in out and "assumptions" in out
    assert main(["plan", "--gpu", "h100x2", "--ttft-slo", "500"]) == 2  # capacity flags need --rate
    bad = FIXTURES / "README.md"
    assert main(["plan", "--gpu", "h100x2", "--rate", "1", "--measured", str(bad)]) == 2
