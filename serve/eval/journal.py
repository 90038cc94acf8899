"""Resumable sample journal: one JSON line per finished sample, keyed by what makes it reproducible.

A line is written with one `write` of the whole line, flushed and fsynced before the sample
counts, so a kill (SIGKILL included) loses at most the sample in flight; a torn last line is
ignored on reading and repaired before the next append. Lines of other runs (another dataset,
server, mode, sampling or token budget) stay in the file and are not used.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nemo_trt.errors import NemoTrtError

FORMAT = "nemo-trt-eval-journal/1"


def run_key(**identity: Any) -> str:
    """Digest of everything a sample depends on except the question and the sample index."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:20]


@dataclass
class SampleRecord:
    run: str
    question_id: str
    sample: int
    answer: str  # the answer part only (never the reasoning)
    reasoning_chars: int
    output_tokens: int | None
    finish_reason: str | None  # "stop" | "length" | None (unknown)
    seconds: float

    @property
    def key(self) -> tuple[str, str, int]:
        return self.run, self.question_id, self.sample


class Journal:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _lines(self) -> Iterator[dict]:
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.endswith("\n"):
                    return  # torn by a kill mid-write: that sample was never counted
                try:
                    data = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(data, dict) and data.get("format") == FORMAT:
                    yield data

    def load(self, run: str) -> dict[tuple[str, int], SampleRecord]:
        """This run's finished samples by (question id, sample index); the first line of a key wins."""
        done: dict[tuple[str, int], SampleRecord] = {}
        for data in self._lines():
            if data.get("run") != run:
                continue
            fields = {k: data[k] for k in SampleRecord.__dataclass_fields__ if k in data}
            try:
                record = SampleRecord(**fields)
            except TypeError:
                continue
            done.setdefault((record.question_id, record.sample), record)
        return done

    def _repair_tail(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")  # finish the torn line so the next record starts clean (it stays unparsable)

    def open(self) -> _Appender:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._repair_tail()
            return _Appender(self.path.open("a", encoding="utf-8"))
        except OSError as exc:
            raise NemoTrtError(f"cannot write the journal {self.path}: {exc.strerror or exc}",
                               "pass --journal PATH in a writable directory") from exc


class _Appender:
    def __init__(self, fh):
        self._fh = fh

    def append(self, record: SampleRecord) -> None:
        line = json.dumps({"format": FORMAT, **asdict(record)}, ensure_ascii=False) + "\n"
        self._fh.write(line)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> _Appender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
