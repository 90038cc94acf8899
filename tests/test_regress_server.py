"""`nemo-trt regress` against real tritonservers on the tiny model (CPU reference backend).

- the committed golden `tests/golden/regress_tiny.json` passes against the session server
  (gRPC, concurrency 2), with JUnit XML parsed and validated;
- `--properties-only` works without a golden (over HTTP);
- a repository whose converted checkpoint has one tensor changed (two lm_head rows swapped) FAILS
  with a first-divergence diff at the predicted position (one extra server for this module).

Re-record the golden (after an intended change of the tiny model or the serving pipeline) with
`NEMO_TRT_REGRESS_RECORD=1 pytest tests/test_regress_server.py -k golden`.
"""
from __future__ import annotations

import hashlib
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fixtures.cli_json import run_cli
from fixtures.perturbed_server import permuted_head_server
from nemo_trt.cli import main

pytestmark = pytest.mark.slow

GOLDEN = Path(__file__).parent / "golden" / "regress_tiny.json"



def tiny_labels(tiny_checkpoint_dir: Path) -> dict[str, str]:
    """Which tiny model the golden belongs to: its cache key (the recipe) and its weights' digest."""
    digest = hashlib.sha256()
    for shard in sorted(Path(tiny_checkpoint_dir).glob("*.safetensors")):
        digest.update(shard.read_bytes())
    return {"tiny_model": Path(tiny_checkpoint_dir).name, "tiny_weights_sha256": digest.hexdigest()}


@pytest.fixture(scope="module")
def golden_path(reference_server, tiny_checkpoint_dir):
    if os.environ.get("NEMO_TRT_REGRESS_RECORD") == "1":
        labels = sum((["--label", f"{k}={v}"] for k, v in tiny_labels(tiny_checkpoint_dir).items()), [])
        code = main(["regress", "record", "--url", reference_server.grpc_url, "--out", str(GOLDEN), "--force",
                     *labels])
        assert code == 0
    assert GOLDEN.is_file(), "record it: NEMO_TRT_REGRESS_RECORD=1 pytest tests/test_regress_server.py"
    return GOLDEN


def stale_golden_hint(golden: dict, tiny_checkpoint_dir: Path) -> str:
    now, then = tiny_labels(tiny_checkpoint_dir), golden.get("labels", {})
    changed = [k for k in now if now[k] != then.get(k)]
    if not changed:
        return "the tiny model is the one the golden was recorded with: this is a serving regression"
    differences = ", ".join(f"{k}: {then.get(k)} -> {now[k]}" for k in changed)
    return (f"the tiny model differs from the recording ({differences}); "
            "if its recipe changed on purpose, or its training is not bit-reproducible on this machine, re-record: "
            "NEMO_TRT_REGRESS_RECORD=1 pytest tests/test_regress_server.py -k golden")


def test_golden_passes_against_the_session_server(reference_server, golden_path, tiny_checkpoint_dir, tmp_path,
                                                  capsys):
    junit = tmp_path / "regress.xml"
    code, out, _ = run_cli(["regress", "check", "--golden", str(golden_path), "--url", reference_server.grpc_url,
                         "--concurrency", "2", "--junit", str(junit), "--json", "--timeout", "120"], capsys)
    report = json.loads(out)
    golden = json.loads(golden_path.read_text())
    failed = [{"name": c["name"], "failures": [k for k in c["checks"] if not k["passed"]], "error": c["error"]}
              for c in report["cases"] if not c["passed"]]
    assert code == 0 and report["passed"], (stale_golden_hint(golden, tiny_checkpoint_dir) + "\n"
                                            + json.dumps(failed, indent=1)[:4000])
    assert {c["name"] for c in report["cases"]} == set(golden["cases"])
    # The server tells its identity through Triton (ensemble parameter), path-independent: the session's
    # repository (fresh temp paths every run) is the very engine the golden was recorded from.
    assert golden["server"]["manifest"] and golden["server"]["engine_id"] == golden["server"]["manifest"]["engine_id"]
    assert not [n for n in report["compatibility"] if "engine" in n or "manifest" in n], (
        f"{report['compatibility']}: the served repository's identity differs from the golden's; if the tiny model, "
        "the converter's output bytes or the tokenizer changed on purpose, re-record: "
        "NEMO_TRT_REGRESS_RECORD=1 pytest tests/test_regress_server.py -k golden")
    modes = {c["name"]: c["mode"] for c in report["cases"]}
    # Greedy and (deterministic backend) seeded cases are compared token for token.
    assert modes["reasoning-off-greedy"] == "tokens" and modes["reasoning-on-seeded"] == "tokens"
    assert golden["server"]["deterministic_sampling"] is True
    assert all(c["latency_ratios"] for c in report["cases"])

    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("tests") == str(len(golden["cases"])) and suite.get("failures") == "0"
    assert suite.get("errors") == "0"
    assert {tc.get("name") for tc in suite.findall("testcase")} == set(golden["cases"])
    for tc in suite.findall("testcase"):
        assert float(tc.get("time")) > 0 and tc.find("failure") is None and tc.find("error") is None


def test_golden_records_what_ci_needs(golden_path):
    golden = json.loads(golden_path.read_text())
    cases = golden["cases"]
    assert all(c["token_ids"] and c["finish_reason"] in ("stop", "length") for c in cases.values())
    assert all(c["timings"]["ttft_s"] and c["timings"]["total_s"] for c in cases.values())
    # The tiny model follows the reasoning protocol: reasoning split from the answer when on.
    assert cases["reasoning-on-greedy"]["reasoning"].strip() and cases["reasoning-on-greedy"]["answer"].strip()
    assert not cases["reasoning-off-greedy"]["reasoning"].strip()
    assert golden["server"]["max_input_len"] and golden["server"]["backend"] == "cpu-reference"


def test_properties_only_over_http_without_golden(reference_server, tmp_path, capsys):
    junit = tmp_path / "props.xml"
    code, out, _ = run_cli(["regress", "check", "--properties-only", "--protocol", "http",
                         "--url", reference_server.http_url, "--junit", str(junit), "--json",
                         "--case", "reasoning-on-greedy", "--case", "stop-words", "--case", "non-ascii"], capsys)
    report = json.loads(out)
    assert code == 0 and report["passed"] and report["properties_only"], out[:3000]
    assert [c["mode"] for c in report["cases"]] == ["properties"] * 3
    assert report["latency"] is None
    tcs = ET.parse(junit).getroot().find("testsuite").findall("testcase")
    assert len(tcs) == 3


SWAP_CASE = "reasoning-on-greedy"


@pytest.fixture(scope="module")
def perturbed_server(tiny_checkpoint_dir, tiny_converted_dir, golden_path, tmp_path_factory):
    """The tiny model with one tensor changed (two lm_head rows swapped), behind its own server.

    Swapping the rows of a token A that the golden emits with another token B makes greedy decoding
    emit B exactly where it emitted A first: a weight change whose effect the test can predict.
    """
    golden_ids = json.loads(golden_path.read_text())["cases"][SWAP_CASE]["token_ids"]
    a = golden_ids[min(10, len(golden_ids) - 1)]
    b = a + 1 if a + 1 not in golden_ids else a + 2
    with permuted_head_server(tiny_converted_dir, tiny_checkpoint_dir, tmp_path_factory.mktemp("perturbed"),
                              [a, b], [b, a]) as server:
        yield server, (a, b, golden_ids.index(a))


def test_perturbed_weights_fail_with_first_divergence(perturbed_server, golden_path, tmp_path, capsys):
    server, (a, b, first) = perturbed_server
    junit = tmp_path / "regress.xml"
    cases = ["reasoning-off-greedy", SWAP_CASE, "stop-words"]
    code, out, _ = run_cli(["regress", "check", "--golden", str(golden_path), "--url", server.grpc_url,
                         "--junit", str(junit), "--json", *sum((["--case", c] for c in cases), [])], capsys)
    report = json.loads(out)
    assert code == 1 and not report["passed"], "swapping two lm_head rows went unnoticed"
    assert any("engine differs from the golden" in n for n in report["compatibility"]), report["compatibility"]
    diverged = [c for c in report["cases"] if c["divergence"]]
    assert SWAP_CASE in [c["name"] for c in diverged], out[:3000]
    diverged = [c for c in diverged if c["name"] == SWAP_CASE]
    div = diverged[0]["divergence"]
    # Exactly where the golden first emitted token A, the perturbed model emits B.
    assert div["position"] == first and div["expected"][0] == a and div["got"][0] == b
    golden = json.loads(golden_path.read_text())["cases"][diverged[0]["name"]]
    pos = div["position"]
    # The diff points at the first differing token, with decoded context on both sides.
    got_ids = diverged[0]["output"]["token_ids"]
    assert golden["token_ids"][:pos] == got_ids[:pos] and div["got"] == got_ids[pos:pos + len(div["got"])]
    assert div["expected"] == golden["token_ids"][pos:pos + len(div["expected"])]
    assert div["expected"] != div["got"]
    assert div["expected_text"] or div["got_text"]
    suite = ET.parse(junit).getroot().find("testsuite")
    failures = [tc for tc in suite.findall("testcase") if tc.find("failure") is not None]
    assert int(suite.get("failures")) == len(failures) >= 1
    message = failures[0].find("failure").get("message") + failures[0].find("failure").text
    assert "first divergence at output token" in message and "expected" in message and "got" in message


def test_perturbed_weights_human_report(perturbed_server, golden_path, capsys):
    server, (_, _, first) = perturbed_server
    code, out, _ = run_cli(["regress", "check", "--golden", str(golden_path), "--url", server.grpc_url,
                         "--case", SWAP_CASE], capsys)
    print(out)
    assert code == 1
    assert "FAIL" in out and f"first divergence at output token {first} " in out
    assert "expected:" in out and "got     :" in out
    assert "differs from the golden" in out and "FAILED: 0/1 cases passed" in out


def test_repeats_under_in_flight_load_agree_with_golden_and_each_other(reference_server, golden_path, capsys):
    cases = ["reasoning-off-greedy", "reasoning-on-seeded", "stop-words"]
    code, out, _ = run_cli(["regress", "check", "--golden", str(golden_path), "--url", reference_server.grpc_url,
                         "--repeat", "3", "--concurrency", "9", "--json",
                         *sum((["--case", c] for c in cases), [])], capsys)
    report = json.loads(out)
    assert code == 0 and report["passed"], out[:3000]
    assert [c["name"] for c in report["cases"]] == cases
    for case in report["cases"]:
        repeats = next(k for k in case["checks"] if k["name"] == "repeats")
        assert repeats["passed"] and repeats["message"] == "3 runs identical"
        assert "3 runs, 0 failed" in case["notes"]
