"""The golden file: what a suite produced on one server, plus that server's identity.

Format (JSON, `format: nemo-trt-regress-golden/1`)::

    {"format": ..., "recorded_at": ISO time, "nemo_trt_version": ...,
     "suite": {"name", "sha256", "source"},
     "settings": {"protocol", "concurrency"},
     "server": ServerIdentity,                # read from Triton, not from a local path
     "cases": {name: CaseRecord, ...}}
"""
from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nemo_trt.atomic import atomic_write_text
from nemo_trt.errors import NemoTrtError

GOLDEN_FORMAT = "nemo-trt-regress-golden/1"


class Timings(BaseModel):
    ttft_s: float | None = None
    itl_s: float | None = None
    total_s: float | None = None


class CaseRecord(BaseModel):
    """One case's observed output (the same shape is used for a fresh run and for the golden)."""

    model_config = ConfigDict(extra="ignore")

    prompt_sha256: str  # digest of the exact request inputs (prompt/messages after padding)
    prompt_chars: int
    sampling: str  # human label, e.g. "greedy" or "T=0.6 top_p=0.95 seed=7"
    max_tokens: int
    token_ids: list[int] | None = None
    text: str = ""
    reasoning: str = ""
    answer: str = ""
    finish_reason: Literal["stop", "length"] | None = None
    num_output_tokens: int | None = None
    num_input_tokens: int | None = None  # prompt length as the server tokenized it
    # What the chat template gives for this request with user text kept as plain text (local tokenizer).
    expected_input_tokens: int | None = None
    num_responses: int = 0
    timings: Timings = Field(default_factory=Timings)


class ServerIdentity(BaseModel):
    """Who answered: Triton version, the repository manifest as the server reports it, and digests."""

    url: str = ""
    protocol: str = "grpc"
    triton_version: str | None = None
    model: str = "ensemble"
    backend: str | None = None  # "tensorrtllm" or the CPU reference backend, from the manifest
    engine_id: str | None = None  # digest identifying the engine/weights actually served
    manifest_sha256: str | None = None
    manifest: dict[str, Any] | None = None
    model_configs_sha256: dict[str, str] = Field(default_factory=dict)
    max_input_len: int | None = None
    # The backend promises identical tokens for the same seed (CPU reference: yes; TRT-LLM: not across builds).
    deterministic_sampling: bool = False

    def short(self) -> str:
        parts = [self.backend or "unknown backend"]
        if self.engine_id:
            parts.append(f"engine {self.engine_id[:12]}")
        if self.triton_version:
            parts.append(f"triton {self.triton_version}")
        return ", ".join(parts)


class SuiteRef(BaseModel):
    name: str
    sha256: str
    source: str = ""


class Settings(BaseModel):
    protocol: str = "grpc"
    concurrency: int = 1


class Golden(BaseModel):
    format: str = GOLDEN_FORMAT
    recorded_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    nemo_trt_version: str = ""
    suite: SuiteRef
    settings: Settings = Field(default_factory=Settings)
    # Free-form context given at record time (`--label KEY=VALUE`): git commit, GPU profile, model digest.
    labels: dict[str, str] = Field(default_factory=dict)
    server: ServerIdentity
    cases: dict[str, CaseRecord]


_INT_LIST = re.compile(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]")


def golden_text(golden: Golden) -> str:
    """Indented JSON with each token-id list on one line (reviewable diffs, small files)."""
    text = json.dumps(golden.model_dump(mode="json"), indent=1, ensure_ascii=False)
    return _INT_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


def save_golden(golden: Golden, path: str | Path) -> None:
    """Atomic: a failed or interrupted record never leaves a truncated golden behind."""
    atomic_write_text(path, golden_text(golden))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # a shared artefact, not a private temp file


def load_golden(path: str | Path) -> Golden:
    path = Path(path)
    if not path.is_file():
        raise NemoTrtError(f"golden file {path} not found",
                           "record one with `nemo-trt regress record --suite S --url HOST:PORT --out GOLDEN.json`, "
                           "or run `nemo-trt regress check --properties-only` without a golden")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise NemoTrtError(f"{path}: not valid JSON ({exc})", "re-record the golden file") from None
    if not isinstance(data, dict) or data.get("format") != GOLDEN_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise NemoTrtError(f"{path}: not a nemo-trt golden file (format {found!r}, expected {GOLDEN_FORMAT!r})",
                           "re-record it with `nemo-trt regress record`")
    try:
        return Golden.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise NemoTrtError(f"{path}: malformed golden file at {where}: {first['msg']}",
                           "re-record it with `nemo-trt regress record`") from None
