"""`nemo-trt eval` on the tiny model behind real tritonservers (CPU reference backend) and the gateway.

The tiny model is trained on the card's eval templates (nemo_trt.build.tiny.eval_records: single-digit
sums answered in `\\boxed{N}`, capitals as letter choices), so it answers its eval set for real:
- the math set (reasoning off, greedy, gRPC) is recorded once per module as the baseline (the
  tiny model must answer it); a rerun on the same checkpoint passes against it, question for question;
- the letter-choice set (reasoning on, sampled, K=2, HTTP) scores from the answer part;
- a served checkpoint with perturbed weights (lm_head rows of the number tokens rotated: every
  number comes out one lower) is flagged by the paired test against the same baseline (exit 1);
- `--protocol openai` through the real gateway passes against the same baseline.

The baseline is recorded in the session rather than committed: the tiny model is retrained whenever
its recipe changes, and what this module checks is the statistics on one checkpoint vs another.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fixtures.cli_json import run_cli_json, start_gateway, stop_gateway
from fixtures.perturbed_server import permuted_head_server
from nemo_trt.cli import main

pytestmark = pytest.mark.slow

MAX_TOKENS = "48"



@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    from nemo_trt.build.tiny import write_eval_jsonl

    root = tmp_path_factory.mktemp("eval-data")
    return {task: str(write_eval_jsonl(task, root / f"tiny_{task}.jsonl")) for task in ("math", "mcq")}


def math_args(url, dataset, out, *extra) -> list[str]:
    return ["eval", "--dataset", dataset, "--task", "math", "--reasoning", "off", "--url", url,
            "--max-tokens", MAX_TOKENS, "--concurrency", "3", "--out", str(out), "--json", *extra]


@pytest.fixture(scope="module")
def baseline(reference_server, datasets, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval-baseline") / "baseline.json"
    try:
        code = main(math_args(reference_server.grpc_url, datasets["math"], out))
    except SystemExit as exc:
        code = exc.code
    assert code == 0 and out.is_file()
    return out


def test_baseline_records_what_the_tiny_model_knows(baseline):
    data = json.loads(baseline.read_text())
    # The tiny model answers (nearly) all of its set in the card's format; a baseline that is mostly
    # wrong would make the planted-failure test meaningless.
    assert data["score"]["pass_at_1"] >= 5 / 6 and data["score"]["truncated"] == 0, data["score"]
    assert data["settings"]["reasoning"] == "off" and data["settings"]["temperature"] == 0.0
    assert data["server"]["backend"] == "cpu-reference"


def test_same_checkpoint_passes_against_its_recorded_baseline(reference_server, datasets, baseline, tmp_path, capsys):
    junit = tmp_path / "eval.xml"
    code, result = run_cli_json(math_args(reference_server.grpc_url, datasets["math"], tmp_path / "r.json",
                                     "--baseline", str(baseline), "--junit", str(junit)), capsys)
    cmp = result["comparison"]
    assert code == 0 and result["passed"] and not cmp["significant_drop"], result
    recorded = json.loads(baseline.read_text())
    assert result["server"]["engine_id"] == recorded["server"]["engine_id"]
    # Greedy on a deterministic backend: the rerun is the recording, question for question.
    assert result["questions"] == recorded["questions"] and cmp["difference_points"] == 0
    detail = json.loads((tmp_path / "r.questions.json").read_text())["questions"]
    assert all(r["output_tokens"] and r["finish_reason"] == "stop" for q in detail for r in q["results"])
    assert [r["extracted"] for q in detail for r in q["results"] if r["correct"]] == \
        [q["gold"] for q in detail if q["correct"]]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("failures") == "0"


def test_letter_choices_with_reasoning_on_over_http(reference_server, datasets, tmp_path, capsys):
    out = tmp_path / "mcq.json"
    code, result = run_cli_json(["eval", "--dataset", datasets["mcq"], "--task", "mcq", "--reasoning", "on", "-k", "2",
                            "--protocol", "http", "--url", reference_server.http_url, "--max-tokens", "96",
                            "--concurrency", "4", "--out", str(out), "--expect", "100±40", "--json"], capsys)
    assert code == 0, result
    s = result["score"]
    assert s["total_samples"] == 12 and s["pass_at_1"] >= 0.5 and s["truncated"] == 0, s
    assert result["settings"]["temperature"] == 0.6 and result["settings"]["top_p"] == 0.95
    # Reasoning came back apart from the answer, and only the answer was graded.
    journal = [json.loads(line) for line in (tmp_path / "mcq.journal.jsonl").read_text().splitlines()]
    assert len(journal) == 12 and all(r["reasoning_chars"] > 0 for r in journal)
    assert all("</think>" not in r["answer"] for r in journal)


@pytest.fixture(scope="module")
def perturbed_server(tiny_checkpoint_dir, tiny_converted_dir, tmp_path_factory):
    """The tiny model with the lm_head rows of the number tokens 0..20 rotated: where the model would
    write N it writes N-1, so every sum is off by one while the output keeps its shape."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tiny_checkpoint_dir) / "tokenizer.json"))
    ids = [tok.encode(str(n), add_special_tokens=False).ids for n in range(21)]
    assert all(len(i) == 1 for i in ids)
    ids = [i[0] for i in ids]
    with permuted_head_server(tiny_converted_dir, tiny_checkpoint_dir, tmp_path_factory.mktemp("eval-perturbed"),
                              ids, ids[1:] + ids[:1]) as server:
        yield server


def test_perturbed_weights_are_a_significant_drop(perturbed_server, datasets, baseline, tmp_path, capsys):
    junit = tmp_path / "eval.xml"
    code, result = run_cli_json(math_args(perturbed_server.grpc_url, datasets["math"], tmp_path / "r.json",
                                     "--baseline", str(baseline), "--junit", str(junit)), capsys)
    cmp = result["comparison"]
    assert code == 1 and not result["passed"] and cmp["significant_drop"], result
    assert cmp["p_value"] < 0.05 and cmp["difference_points"] <= -80
    assert result["server"]["engine_id"] != json.loads(baseline.read_text())["server"]["engine_id"]
    failure = ET.parse(junit).getroot().find("testsuite/testcase/failure")
    assert failure is not None and "significant drop" in failure.get("message")


def test_openai_gateway_passes_against_the_same_baseline(reference_server, reference_repository, datasets, baseline,
                                                         tmp_path, capsys):
    gateway = start_gateway(reference_server.grpc_url, reference_repository, tmp_path / "gateway.log")
    try:
        code, result = run_cli_json(math_args(gateway.url.split("://", 1)[1], datasets["math"], tmp_path / "r.json",
                                         "--protocol", "openai", "--baseline", str(baseline)), capsys)
    finally:
        assert stop_gateway(gateway) == 0
    assert code == 0 and not result["comparison"]["significant_drop"], result
    recorded = json.loads(baseline.read_text())
    assert result["server"]["via"] == "openai"
    assert result["server"]["system_fingerprint"] == f"nemo-trt-{recorded['server']['engine_id']}"
    assert result["score"]["pass_at_1"] == recorded["score"]["pass_at_1"]
