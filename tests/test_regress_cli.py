"""`nemo-trt regress` usage errors and timeouts: no server needed."""
from __future__ import annotations

import time

from nemo_trt.cli import main
from nemo_trt.serve.client import Delta
from nemo_trt.serve.regress import runner
from nemo_trt.serve.regress.golden import ServerIdentity
from nemo_trt.serve.regress.suite import parse_suite


def run(args, capsys):
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out + out.err


def test_check_needs_a_golden_or_properties_only(capsys):
    code, out = run(["regress", "check", "--url", "127.0.0.1:1"], capsys)
    assert code == 2 and "--golden" in out and "--properties-only" in out


def test_missing_golden_and_bad_suite(tmp_path, capsys):
    code, out = run(["regress", "check", "--golden", str(tmp_path / "none.json"), "--url", "127.0.0.1:1"], capsys)
    assert code == 2 and "not found" in out and "regress record" in out
    bad = tmp_path / "s.yaml"
    bad.write_text("name: s\ncases: [{name: a, prompt: x, sampling: {temperature: -1}}]\n")
    code, out = run(["regress", "check", "--properties-only", "--suite", str(bad)], capsys)
    assert code == 2 and 'case "a" (#1): sampling.temperature' in out


def test_record_refuses_to_overwrite_and_unreachable_server(tmp_path, capsys):
    out_file = tmp_path / "g.json"
    out_file.write_text("{}")
    code, out = run(["regress", "record", "--url", "127.0.0.1:1", "--out", str(out_file)], capsys)
    assert code == 2 and "--force" in out and out_file.read_text() == "{}"
    code, out = run(["regress", "record", "--url", "127.0.0.1:1", "--out", str(tmp_path / "new.json")], capsys)
    assert code == 1 and "cannot read the Triton server" in out and not (tmp_path / "new.json").exists()
    code, out = run(["regress", "record", "--url", "127.0.0.1:1", "--out", str(tmp_path / "n.json"),
                     "--label", "novalue"], capsys)
    assert code == 2 and "KEY=VALUE" in out


def test_a_slow_case_times_out_clearly_and_is_cancelled(monkeypatch):
    closed = []

    def slow_stream(url, request, protocol, timeout):
        def gen():
            try:
                for i in range(1000):
                    time.sleep(0.05)
                    yield Delta(text="x", num_output_tokens=i + 1, time=0.05 * (i + 1), token_ids=[i])
            finally:
                closed.append(True)  # the client cancels the request on the server here
        return gen()

    monkeypatch.setattr(runner, "stream_generate", slow_stream)
    suite = parse_suite({"name": "t", "cases": [{"name": "slow", "prompt": "x"}, {"name": "also", "prompt": "y"}]})
    prepared = [runner.prepare(suite, c, ServerIdentity(), None) for c in suite.cases]
    t0 = time.perf_counter()
    outcomes = runner.run_cases(prepared, "127.0.0.1:1", "grpc", concurrency=2, timeout=0.3)
    assert time.perf_counter() - t0 < 5
    assert [o.record for o in outcomes] == [None, None]
    assert all(o.error.startswith("timed out after 0.3 s") for o in outcomes)
    assert closed == [True, True]
