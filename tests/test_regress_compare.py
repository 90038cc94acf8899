"""Regression suite/compare/report without a server: hand-made results."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from nemo_trt.errors import NemoTrtError
from nemo_trt.serve.regress.compare import (
    RegressionReport, compare_case, compatibility_notes, first_divergence, summarize_latency,
)
from nemo_trt.serve.regress.golden import (
    CaseRecord, Golden, ServerIdentity, SuiteRef, Timings, load_golden, save_golden,
)
from nemo_trt.serve.regress.report import print_report, to_json, to_junit
from nemo_trt.serve.regress.suite import load_suite, parse_suite

SERVER = ServerIdentity(url="127.0.0.1:8001", backend="cpu-reference", engine_id="aaa", deterministic_sampling=True)


def record(ids, text="hello world", finish="stop", ttft=0.01, itl=0.002, total=0.05, reasoning="", **kw):
    return CaseRecord(prompt_sha256="p1", prompt_chars=5, sampling="greedy", max_tokens=16, token_ids=ids,
                      text=text, reasoning=reasoning, answer=kw.pop("answer", text), finish_reason=finish,
                      num_output_tokens=None if ids is None else len(ids),
                      timings=Timings(ttft_s=ttft, itl_s=itl, total_s=total), **kw)


def suite(**case):
    base = {"name": "c1", "prompt": "hi"}
    base.update(case)
    return parse_suite({"name": "t", "defaults": {"max_tokens": 16, "checks": {"finish_reason": ["stop"]}},
                        "cases": [base]})


def golden(rec, deterministic=True):
    return Golden(suite=SuiteRef(name="t", sha256="x"),
                  server=SERVER.model_copy(update={"deterministic_sampling": deterministic}), cases={"c1": rec})


def decode(ids):
    return "".join(chr(ord("a") + i % 26) for i in ids)


def test_first_divergence_context_and_lengths():
    div = first_divergence(list(range(20)), list(range(12)) + [99, 98], decode)
    assert div.position == 12 and div.unit == "token"
    assert div.context == [6, 7, 8, 9, 10, 11]
    assert div.expected == [12, 13, 14, 15, 16, 17, 18, 19] and div.got == [99, 98]
    assert div.context_text == decode([6, 7, 8, 9, 10, 11]) and div.got_text == decode([99, 98])
    assert (div.expected_len, div.got_len) == (20, 14)
    text = div.describe()
    assert "first divergence at output token 12" in text and "expected" in text and "[99, 98]" in text
    assert first_divergence([1, 2], [1, 2]) is None
    short = first_divergence([1, 2, 3], [1, 2])  # got stopped early
    assert short.position == 2 and short.got == [] and short.expected == [3]


def test_greedy_token_match_and_mismatch():
    s = suite()
    case = s.cases[0]
    ok = compare_case(case, s.checks(case), record([1, 2, 3]), golden(record([1, 2, 3])), SERVER, decode)
    assert ok.passed and ok.mode == "tokens"
    bad = compare_case(case, s.checks(case), record([1, 5, 3]), golden(record([1, 2, 3])), SERVER, decode)
    assert not bad.passed and bad.divergence.position == 1
    assert "tokens" in bad.failure_message() and "first divergence" in bad.failure_message()


def test_finish_reason_property_and_golden_finish():
    s = suite()
    case = s.cases[0]
    v = compare_case(case, s.checks(case), record([1, 2], finish="length"), golden(record([1, 2])), SERVER)
    names = {c.name for c in v.failures}
    assert names == {"finish_reason", "golden_finish_reason"}


def test_seeded_sampling_compared_exactly_only_with_determinism_promise():
    s = suite(sampling={"temperature": 0.6, "top_p": 0.95, "seed": 7})
    case = s.cases[0]
    fresh, old = record([1, 9]), record([1, 2])
    exact = compare_case(case, s.checks(case), fresh, golden(old, True), SERVER)
    assert exact.mode == "tokens" and not exact.passed
    relaxed = compare_case(case, s.checks(case), fresh, golden(old, False), SERVER)
    assert relaxed.mode == "properties" and relaxed.passed
    assert any("does not promise" in n for n in relaxed.notes)
    unseeded = suite(sampling={"temperature": 0.6})
    v = compare_case(unseeded.cases[0], unseeded.checks(unseeded.cases[0]), fresh, golden(old), SERVER)
    assert v.mode == "properties" and v.passed


def test_text_fallback_without_token_ids():
    s = suite()
    case = s.cases[0]
    v = compare_case(case, s.checks(case), record(None, text="abcXef"), golden(record(None, text="abcdef")), SERVER)
    assert v.mode == "text" and not v.passed and v.divergence.position == 3


def test_stale_golden_request_and_padded_prompt():
    s = suite()
    changed = record([1, 2]).model_copy(update={"prompt_sha256": "other"})
    v = compare_case(s.cases[0], s.checks(s.cases[0]), changed, golden(record([1, 2])), SERVER)
    assert not v.passed and "re-record" in v.failure_message()
    padded = suite(prompt_tokens="near_limit")
    v = compare_case(padded.cases[0], padded.checks(padded.cases[0]), changed, golden(record([1, 2])), SERVER)
    assert v.passed and v.mode == "properties" and "max_input_len" in v.notes[0]


@pytest.mark.parametrize("checks,rec,failed", [
    ({"reasoning": "present"}, dict(text="<think>x</think>ans"), set()),
    ({"reasoning": "present"}, dict(text="plain"), {"reasoning"}),
    ({"reasoning": "present"}, dict(text="plain", reasoning="thought"), set()),
    ({"reasoning": "absent"}, dict(text="<think></think>a"), {"reasoning"}),
    ({"output_tokens": {"min": 3}}, dict(), {"output_tokens"}),
    ({"output_tokens": {"max": 1}}, dict(), {"output_tokens"}),
    ({"contains": ["world"], "not_contains": ["<|eot_id|>"]}, dict(), set()),
    ({"not_contains": ["world"]}, dict(), {"not_contains[world]"}),
    ({"answer_contains": ["zzz"]}, dict(), {"answer_contains[zzz]"}),
    ({"answer_chars": {"min": 1}}, dict(answer=""), {"answer_chars"}),
])
def test_property_checks(checks, rec, failed):
    s = suite(checks=checks)
    v = compare_case(s.cases[0], s.checks(s.cases[0]), record([1, 2], **rec), None, SERVER)
    assert {c.name for c in v.failures} == failed


def test_case_checks_override_defaults():
    s = suite(checks={"finish_reason": ["stop", "length"]})
    assert s.checks(s.cases[0]).finish_reason == ["stop", "length"]
    s2 = suite(checks={"reasoning": "absent"})
    assert s2.checks(s2.cases[0]).finish_reason == ["stop"]  # default kept


def test_suite_errors_name_file_and_case(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ncases:\n  - name: ok\n    prompt: hi\n  - name: broken\n"
                    "    prompt: hi\n    messages: [{role: user, content: hi}]\n  - name: typo\n    prompt: a\n"
                    "    checks: {output_tokens: {min: 5, max: 2}, bogus: 1}\n")
    with pytest.raises(NemoTrtError) as err:
        load_suite(path)
    text = str(err.value)
    assert str(path) in text and 'case "broken" (#2)' in text and "exactly one of" in text
    assert 'case "typo" (#3): checks.bogus' in text and "min (5) is larger than max (2)" in text
    with pytest.raises(NemoTrtError, match="not found"):
        load_suite(tmp_path / "missing.yaml")
    dup = tmp_path / "dup.yaml"
    dup.write_text("name: x\ncases: [{name: a, prompt: x}, {name: a, prompt: y}]\n")
    with pytest.raises(NemoTrtError, match="appears twice"):
        load_suite(dup)


def test_default_suite_is_valid_and_covers_the_brief():
    s = load_suite("default")
    kinds = {c.name for c in s.cases}
    assert s.sha256 and len(kinds) == len(s.cases)
    assert any(c.reasoning == "on" for c in s.cases) and any(c.reasoning == "off" for c in s.cases)
    assert any(c.prompt_tokens == "near_limit" for c in s.cases)
    assert any(c.stop_words for c in s.cases)
    assert any(c.messages and any(m.role == "assistant" and "</think>" in m.content for m in c.messages)
               for c in s.cases)
    assert any("<|eot_id|>" in (c.prompt or "") + "".join(m.content for m in c.messages or []) for c in s.cases)
    assert any(any(ord(ch) > 127 for ch in (c.prompt or "") + "".join(m.content for m in c.messages or []))
               for c in s.cases)
    assert any(not c.sampling.greedy and c.sampling.seed is not None for c in s.cases)


def test_golden_round_trip_and_errors(tmp_path):
    g = golden(record([1, 2, 3]))
    path = tmp_path / "g.json"
    save_golden(g, path)
    assert load_golden(path) == g
    assert not list(tmp_path.glob("*.partial"))
    (tmp_path / "other.json").write_text('{"format": "x"}')
    with pytest.raises(NemoTrtError, match="not a nemo-trt golden"):
        load_golden(tmp_path / "other.json")
    with pytest.raises(NemoTrtError, match="regress record"):
        load_golden(tmp_path / "none.json")


def _report(verdicts, tolerance=None):
    return RegressionReport(suite="t", server=SERVER, golden_server=SERVER.model_copy(update={"engine_id": "bbb"}),
                            verdicts=verdicts, latency=summarize_latency(verdicts, tolerance),
                            compatibility=compatibility_notes(SERVER.model_copy(update={"engine_id": "bbb"}), SERVER))


def test_latency_ratios_and_tolerance():
    s = suite()
    slow = record([1, 2], ttft=0.03, itl=0.002, total=0.1)
    v = compare_case(s.cases[0], s.checks(s.cases[0]), slow, golden(record([1, 2])), SERVER)
    assert v.latency_ratios == pytest.approx({"ttft_s": 3.0, "itl_s": 1.0, "total_s": 2.0})
    assert _report([v]).passed  # no tolerance: report only
    rep = _report([v], tolerance=50)
    assert not rep.passed and rep.latency.failed_metrics() == ["ttft_s", "total_s"]
    assert _report([v], tolerance=250).passed


def test_junit_json_and_table(capsys):
    from rich.console import Console

    s = suite()
    good = compare_case(s.cases[0], s.checks(s.cases[0]), record([1, 2, 3]), golden(record([1, 2, 3])), SERVER)
    bad = compare_case(s.cases[0], s.checks(s.cases[0]), record([1, 7, 3]), golden(record([1, 2, 3])), SERVER,
                       decode)
    bad.name = "c2"
    from nemo_trt.serve.regress.compare import CaseVerdict
    err = CaseVerdict("c3", "properties", error="timed out after 5 s")
    rep = _report([good, bad, err], tolerance=10)
    assert not rep.passed and rep.counts == {"cases": 3, "passed": 1, "failed": 2}
    root = ET.fromstring(to_junit(rep))
    ts = root.find("testsuite")
    assert ts.get("tests") == "4" and ts.get("failures") == "1" and ts.get("errors") == "1"
    cases = {c.get("name"): c for c in ts.findall("testcase")}
    assert set(cases) == {"c1", "c2", "c3", "latency"}
    assert cases["c1"].find("failure") is None
    failure = cases["c2"].find("failure")
    assert "first divergence at output token 1" in failure.get("message") + failure.text
    assert "expected" in failure.text and decode([2]) in failure.text
    assert "timed out" in cases["c3"].find("error").get("message")
    props = {p.get("name"): p.get("value") for p in ts.find("properties")}
    assert "engine differs" in props["compatibility.0"]
    data = to_json(rep)
    json.dumps(data)
    assert data["passed"] is False and data["cases"][1]["divergence"]["position"] == 1
    console = Console(record=True, width=160)
    print_report(rep, console)
    out = console.export_text()
    assert "FAILED" in out and "engine differs" in out and "first divergence" in out


def test_stop_words_must_end_the_output():
    s = suite(stop_words=["."])
    case = s.cases[0]
    ok = compare_case(case, s.checks(case), record([1, 2], text="One sentence."), None, SERVER)
    assert ok.passed
    bad = compare_case(case, s.checks(case), record([1, 2], text="One. Two."), None, SERVER)
    assert [c.name for c in bad.failures] == ["stop_words"] and "continues after" in bad.failure_message()


def test_golden_file_keeps_token_lists_on_one_line(tmp_path):
    path = tmp_path / "g.json"
    save_golden(golden(record([1, 22, 333])), path)
    assert '"token_ids": [1, 22, 333]' in path.read_text()
    assert (path.stat().st_mode & 0o044) == 0o044  # readable by others, like any checked-in file
    assert load_golden(path).cases["c1"].token_ids == [1, 22, 333]


def test_prompt_token_checks():
    s = suite(checks={"prompt_tokens_match": True})
    case = s.cases[0]
    ok = record([1, 2], num_input_tokens=40, expected_input_tokens=40)
    assert compare_case(case, s.checks(case), ok, None, SERVER).passed
    # A typed <|eot_id|> that became one control token makes the server's prompt shorter than the template's.
    injected = record([1, 2], num_input_tokens=34, expected_input_tokens=40)
    v = compare_case(case, s.checks(case), injected, None, SERVER)
    assert [c.name for c in v.failures] == ["prompt_tokens_match"] and "control tokens" in v.failure_message()
    unknown = record([1, 2], num_input_tokens=34)
    v = compare_case(case, s.checks(case), unknown, None, SERVER)
    assert v.passed and "no local tokenizer" in v.notes[0]
    # Against the golden the same request must tokenize to the same length.
    v = compare_case(case, s.checks(case), record([1, 2], num_input_tokens=41, expected_input_tokens=41),
                     golden(record([1, 2], num_input_tokens=40)), SERVER)
    assert [c.name for c in v.failures] == ["golden_prompt_tokens"]


def test_repeats_must_agree_for_reproducible_cases():
    from nemo_trt.serve.regress.workflow import merge_repeats

    s = suite()
    case = s.cases[0]
    same = [compare_case(case, s.checks(case), record([1, 2]), None, SERVER) for _ in range(3)]
    merged = merge_repeats(case, same, SERVER)
    assert merged.passed and merged.checks[-1].message == "3 runs identical"
    mixed = [compare_case(case, s.checks(case), record(ids), None, SERVER) for ids in ([1, 2], [1, 3], [1, 2])]
    merged = merge_repeats(case, mixed, SERVER)
    assert not merged.passed and [c.name for c in merged.failures] == ["repeats"]
    unseeded = suite(sampling={"temperature": 0.7})
    merged = merge_repeats(unseeded.cases[0], [compare_case(unseeded.cases[0], s.checks(case), record(ids), None,
                                                             SERVER) for ids in ([1], [2])], SERVER)
    assert merged.passed and all(c.name != "repeats" for c in merged.checks)
