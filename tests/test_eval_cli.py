"""`nemo-trt eval` against a scripted OpenAI-compatible server: the whole command without a model.

Covers the dataset errors, answer-part-only grading, truncation reporting, the drop decision and
its exit code, JUnit, and resuming after the process is killed mid-run (SIGKILL and SIGINT).
The tiny model on the real CPU reference server is tests/test_eval_server.py.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

from fixtures import fake_openai_eval as fake
from fixtures.cli_json import run_cli


@pytest.fixture()
def server():
    state = fake.start()
    yield state
    fake.stop(state)


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)



def eval_args(server, dataset, out, *extra) -> list[str]:
    return ["eval", "--dataset", dataset, "--task", "math", "--protocol", "openai", "--url", server.url,
            "--out", str(out), "--json", *extra]


def test_scores_only_the_answer_part_and_reports_truncation(server, tmp_path, capsys):
    server.wrong, server.truncate = {"q1"}, {"q2"}
    dataset = write_jsonl(tmp_path / "set.jsonl", fake.records(6))
    junit = tmp_path / "j.xml"
    code, out, _ = run_cli(eval_args(server, dataset, tmp_path / "r.json", "-k", "2", "--max-tokens", "7",
                                     "--junit", str(junit)), capsys)
    result = json.loads(out)
    assert code == 0 and result["passed"] and result["comparison"] is None
    s = result["score"]
    # The reasoning holds a wrong box every time: only the content counts.
    assert s["pass_at_1"] == pytest.approx(4 / 6) and s["correct_samples"] == 8 and s["total_samples"] == 12
    assert s["truncated"] == 2 and s["truncated_wrong"] == 2 and s["no_answer"] == 2
    assert s["pass_at_1_excluding_truncated"] == pytest.approx(4 / 5)
    assert result["settings"]["temperature"] == 0.6 and result["settings"]["top_p"] == 0.95
    assert result["server"] == {"via": "openai", "model": "fake", "system_fingerprint": "nemo-trt-fake"}
    # The card's system switch and template went out; sample k carried seed k.
    assert {system for _, _, system in server.log} == {"detailed thinking on"}
    assert sorted(seed for q, seed, _ in server.log if q == "q0") == [0, 1]
    detail = json.loads((tmp_path / "r.questions.json").read_text())["questions"]
    by_id = {q["id"]: q for q in detail}
    assert by_id["q1"]["results"][0]["extracted"] == "3" and by_id["q1"]["gold"] == "2"
    assert by_id["q2"]["results"][0] | {"seconds": 0} == {
        "sample": 0, "extracted": None, "correct": False, "output_tokens": 7, "truncated": True,
        "finish_reason": "length", "seconds": 0}
    assert json.loads((tmp_path / "r.json").read_text())["questions"][1] == {
        "id": "q1", "correct": 0, "samples": 2, "truncated": 0, "no_answer": 0}
    suites = ET.parse(junit).getroot().findall("testsuite")
    assert suites[0].get("failures") == "0" and len(suites[1].findall("testcase")) == 6
    assert "power" in result and result["power"]["questions_needed"] >= 1


def test_expect_flags_a_significant_drop_only(server, tmp_path, capsys):
    dataset = write_jsonl(tmp_path / "set.jsonl", fake.records(12))
    code, out, _ = run_cli(eval_args(server, dataset, tmp_path / "a.json", "--expect", "95±3",
                                     "--reasoning", "off"), capsys)
    assert code == 0 and json.loads(out)["comparison"]["significant_drop"] is False
    assert json.loads(out)["settings"]["temperature"] == 0.0
    server.wrong = {f"q{i}" for i in range(8)}
    junit = tmp_path / "j.xml"
    code, out, _ = run_cli(eval_args(server, dataset, tmp_path / "b.json", "--expect", "95±3", "--reasoning", "off",
                                     "--junit", str(junit)), capsys)
    result = json.loads(out)
    assert code == 1 and not result["passed"] and result["comparison"]["significant_drop"]
    assert result["comparison"]["p_value"] < 0.05 and result["comparison"]["difference_points"] < -50
    failure = ET.parse(junit).getroot().find("testsuite/testcase/failure")
    assert failure is not None and "significant drop" in failure.get("message")


def test_baseline_paired_decision(server, tmp_path, capsys):
    dataset = write_jsonl(tmp_path / "set.jsonl", fake.records(10))
    base = tmp_path / "base.json"
    assert run_cli(eval_args(server, dataset, base), capsys)[0] == 0
    code, out, _ = run_cli(eval_args(server, dataset, tmp_path / "same.json", "--baseline", str(base)), capsys)
    cmp = json.loads(out)["comparison"]
    assert code == 0 and cmp["test"].startswith("McNemar") and cmp["p_value"] == 1.0 and not cmp["notes"]
    server.wrong = {"q0", "q1", "q2", "q3", "q4"}
    code, out, _ = run_cli(eval_args(server, dataset, tmp_path / "worse.json", "--baseline", str(base)), capsys)
    cmp = json.loads(out)["comparison"]
    assert code == 1 and cmp["significant_drop"] and cmp["p_value"] == pytest.approx(1 / 32)
    server.wrong = {"q0", "q1"}  # two questions: within noise at alpha 0.05
    code, out, _ = run_cli(eval_args(server, dataset, tmp_path / "bit.json", "--baseline", str(base)), capsys)
    assert code == 0 and not json.loads(out)["comparison"]["significant_drop"]


@pytest.mark.parametrize("line, message", [
    ("not json", "line 2: not valid JSON"),
    ('{"answer": "1"}', "line 2: missing or empty `question`"),
    ('{"question": "x"}', "line 2: missing `answer`"),
    ('{"question": "x", "answer": "1", "choices": ["a"]}', "`choices` given on a 'math' line"),
    ('{"question": "What is 0 plus 1?", "answer": "1", "id": "q0"}', "duplicate id 'q0'"),
    ('[1, 2]', "expected a JSON object"),
])
def test_bad_dataset_lines(server, tmp_path, capsys, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(fake.records(1)[0]) + "\n" + line + "\n")
    code, _, err = run_cli(eval_args(server, str(path), tmp_path / "r.json"), capsys)
    assert code == 2 and message in " ".join(err.split()) and "fix:" in err
    assert not (tmp_path / "r.json").exists()


def test_mcq_dataset_checks(server, tmp_path, capsys):
    path = write_jsonl(tmp_path / "m.jsonl", [{"question": "q", "answer": "E", "choices": ["a", "b", "c", "d"]}])
    code, _, err = run_cli(["eval", "--dataset", path, "--task", "mcq", "--protocol", "openai", "--url", server.url],
                           capsys)
    assert code == 2 and "neither a letter A-D nor one of the choices" in err
    code, _, err = run_cli(["eval", "--dataset", path, "--protocol", "openai", "--url", server.url], capsys)
    assert code == 2 and "--task is needed" in err


def test_usage_errors(server, tmp_path, capsys):
    dataset = write_jsonl(tmp_path / "set.jsonl", fake.records(2))
    code, _, err = run_cli(eval_args(server, dataset, tmp_path / "r.json", "--expect", "lots"), capsys)
    assert code == 2 and "SCORE or SCORE±TOL" in err
    code, _, err = run_cli(eval_args(server, dataset, tmp_path / "r.json", "--baseline", str(tmp_path / "no.json")),
                           capsys)
    assert code == 2 and "does not exist" in err
    code, _, err = run_cli(eval_args(server, dataset, tmp_path / "r.json", "--benchmark", "mmlu"), capsys)
    assert code == 2 and "math500" in err


def test_card_benchmark_name_sets_the_default_expectation(server, tmp_path, capsys):
    dataset = write_jsonl(tmp_path / "MATH500-subset.jsonl", fake.records(4))
    code, out, _ = run_cli(["eval", "--dataset", dataset, "--protocol", "openai", "--url", server.url,
                            "--out", str(tmp_path / "r.json"), "--json", "--reasoning", "off"], capsys)
    result = json.loads(out)
    assert result["dataset"]["benchmark"] == "math500" and result["settings"]["task"] == "math"
    assert result["comparison"]["reference"] == "model card math500 (reasoning off)"
    assert result["comparison"]["reference_pass_at_1"] == pytest.approx(0.74) and code == 0
    code, out, _ = run_cli(["eval", "--dataset", dataset, "--protocol", "openai", "--url", server.url, "--task",
                            "math", "--out", str(tmp_path / "r.json"), "--json", "--benchmark", "none"], capsys)
    assert json.loads(out)["comparison"] is None


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_resume_after_kill_mid_run(tmp_path, sig):
    """A real `nemo-trt eval` process killed mid-run, then rerun: every sample counted exactly once."""
    state = fake.start(delay=0.15)
    try:
        n, k = 10, 3
        dataset = write_jsonl(tmp_path / "set.jsonl", fake.records(n))
        state.wrong = {"q3", "q7"}
        out = tmp_path / "r.json"
        journal = tmp_path / "r.journal.jsonl"
        cmd = [sys.executable, "-m", "nemo_trt.cli",
               *eval_args(state, dataset, out, "-k", str(k), "--concurrency", "2")]
        # SIGINT as in a terminal, even when this runner was started in the background (SIGINT ignored)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and journal.read_text().count("\n") >= 8:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        code = proc.wait(60)
        assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 130), proc.stderr.read()
        assert not out.exists()
        kept = [json.loads(line) for line in journal.read_text().splitlines() if line.strip().endswith("}")]
        done_before = {(r["question_id"], r["sample"]) for r in kept}
        assert 8 <= len(done_before) < n * k
        asked_before = len(state.log)
        state.log.clear()

        rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr
        result = json.loads(rerun.stdout)
        # Nothing lost, nothing counted twice, and only the missing samples were asked for again.
        asked_now = {(q, seed) for q, seed, _ in state.log}
        assert len(state.log) == len(asked_now) == n * k - len(done_before)
        assert not asked_now & done_before
        assert result["resumed_samples"] == len(done_before) and asked_before >= len(done_before)
        assert result["score"]["total_samples"] == n * k and result["score"]["correct_samples"] == (n - 2) * k
        lines = [json.loads(line) for line in journal.read_text().splitlines() if line.strip().endswith("}")]
        assert len({(r["question_id"], r["sample"]) for r in lines}) == n * k
        # A third run asks nothing at all.
        state.log.clear()
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and not state.log and json.loads(again.stdout)["resumed_samples"] == n * k
    finally:
        fake.stop(state)
