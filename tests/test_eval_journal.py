"""`nemo-trt eval` journal (resume) and dataset loading, without a server."""
from __future__ import annotations

import json

import pytest

from nemo_trt.errors import NemoTrtError
from nemo_trt.serve.eval.dataset import benchmark_name, load_dataset
from nemo_trt.serve.eval.journal import Journal, SampleRecord, run_key


def record(run: str, qid: str, k: int, answer: str = "\\boxed{1}") -> SampleRecord:
    return SampleRecord(run, qid, k, answer, 0, 5, "stop", 0.1)


def test_journal_round_trip_torn_tail_and_other_runs(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    with journal.open() as out:
        out.append(record("a", "q1", 0))
        out.append(record("b", "q1", 0, "other run"))
        out.append(record("a", "q1", 0, "duplicate: the first wins"))
        out.append(record("a", "q2", 1))
    with path.open("a") as fh:
        fh.write('{"format": "nemo-trt-eval-journal/1", "run": "a", "question_id": "q3", "sam')  # killed mid-write
    done = journal.load("a")
    assert set(done) == {("q1", 0), ("q2", 1)} and done[("q1", 0)].answer == "\\boxed{1}"
    assert set(journal.load("b")) == {("q1", 0)}
    # The next append starts on a fresh line; the torn one stays unreadable and uncounted.
    with journal.open() as out:
        out.append(record("a", "q3", 0))
    assert set(journal.load("a")) == {("q1", 0), ("q2", 1), ("q3", 0)}
    assert all(line.endswith("}") for line in path.read_text().splitlines()[:-2])


def test_run_key_depends_on_every_setting():
    base = {"dataset": "d", "server": {"engine_id": "e"}, "reasoning": "on", "max_tokens": 10}
    keys = {run_key(**base), run_key(**(base | {"reasoning": "off"})), run_key(**(base | {"max_tokens": 11})),
            run_key(**(base | {"server": {"engine_id": "f"}}))}
    assert len(keys) == 4 and run_key(**base) == run_key(**dict(reversed(list(base.items()))))


def test_dataset_ids_letters_and_hash(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"question": "Capital of France?", "answer": "Paris", "choices": ["Rome", "Paris", "Oslo", "Lima"]},
            {"id": 7, "question": "Capital of Peru?", "answer": "d", "choices": ["Rome", "Paris", "Oslo", "Lima"]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    data = load_dataset(path, "mcq")
    assert [q.answer for q in data.questions] == ["B", "D"]  # choice text or letter -> letter
    assert data.questions[0].id.startswith("q-") and data.questions[1].id == "7"
    # Reformatting the file keeps the hash (it is of the content); changing an answer does not.
    path.write_text("\n".join(json.dumps(r, indent=None, separators=(",", ":")) for r in rows))
    assert load_dataset(path, "mcq").sha256 == data.sha256
    rows[1]["answer"] = "C"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert load_dataset(path, "mcq").sha256 != data.sha256
    with pytest.raises(NemoTrtError, match="exactly 4 strings"):
        path.write_text(json.dumps({"question": "x", "answer": "A", "choices": ["a", "b"]}))
        load_dataset(path, "mcq")
    with pytest.raises(NemoTrtError, match="no questions"):
        path.write_text("\n")
        load_dataset(path, "math")


@pytest.mark.parametrize("name, expected", [("math500.jsonl", "math500"), ("MATH-500_test.jsonl", "math500"),
                                            ("aime25-on.jsonl", "aime25"), ("gpqa_diamond.jsonl", "gpqa_diamond"),
                                            ("GPQA-Diamond-shuffled.jsonl", "gpqa_diamond"), ("mine.jsonl", None)])
def test_benchmark_name(name, expected):
    assert benchmark_name(name, ["math500", "aime25", "gpqa_diamond"]) == expected
