"""CPU reference stand-in for the TensorRT-LLM backend: tensor contract + fair scheduler.

`model_repository/tensorrt_llm_reference/1/model.py` is a thin Triton adapter over this
module. It takes the same input tensors as the TensorRT-LLM `tensorrt_llm` model
(triton-trtllm-repository.md §4.2/§4.3), so the ensemble, pre- and post-processing are the
same files whether the engine runs on GPUs or this PyTorch reference runs on CPU.

Scheduling: the model is decoupled; `execute()` only enqueues. One background thread
round-robins **one decode step per active session** (the first step of a session is its
prefill), so N concurrent requests each advance one token per round: no request waits for
another to finish (fair, but not batched — the reference model runs one sequence at a
time). At most `max_active` sessions run at once; later requests wait in FIFO order.

Responses follow the TensorRT-LLM backend:
- streaming: one response per generated token; the final flag travels *with* the last data
  response (cpu-triton.md, addendum 2: a separate empty final can overtake the last token
  through the ensemble). A session that ends without a new token sends a final response
  carrying zero tokens, which still flows through post-processing in order.
- non-streaming: one response with all tokens (plus the prompt when
  `exclude_input_in_output` is false).
- Generation stops at `end_id`, at any single-token entry of `stop_words_list`, at a
  multi-token stop sequence, or after `request_output_len` tokens. The token that matched
  `end_id`/a single-token stop is not returned (like `end_id` in TRT-LLM), multi-token stop
  sequences are.
- `num_output_tokens` is the cumulative number of generated tokens returned so far.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

log = logging.getLogger("nemo_trt.reference_backend")

DEFAULT_MAX_ACTIVE = 16


class BadRequest(ValueError):
    """Input tensors that the backend cannot serve; becomes an error response."""


# --------------------------------------------------------------------------- model protocol


class Session(Protocol):
    finished: bool
    finish_reason: str | None
    want_logprobs: bool  # set to get `logprobs` (one per generated id)
    logprobs: list[float]

    def step(self) -> int | None: ...


class Model(Protocol):
    def start_session(self, prompt_ids: list[int], sampling: Any, stop_ids: list[int],
                      max_new_tokens: int) -> Session: ...


# --------------------------------------------------------------------------- requests


@dataclass
class BackendRequest:
    input_ids: list[int]
    max_new_tokens: int
    end_id: int | None = None
    pad_id: int | None = None
    stop_sequences: list[list[int]] = field(default_factory=list)
    streaming: bool = False
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    exclude_input_in_output: bool = True
    request_id: str = ""
    return_perf_metrics: bool = False
    return_log_probs: bool = False
    arrival_time_ns: int = field(default_factory=time.monotonic_ns)  # TensorRT-LLM: steady clock at arrival

    @property
    def stop_ids(self) -> list[int]:
        """Token ids that end generation by themselves: end_id plus single-token stop words."""
        ids = [] if self.end_id is None else [self.end_id]
        ids += [seq[0] for seq in self.stop_sequences if len(seq) == 1]
        return sorted(set(ids))

    @property
    def multi_token_stops(self) -> list[list[int]]:
        return [seq for seq in self.stop_sequences if len(seq) > 1]


def decode_word_list(value: np.ndarray | None) -> list[list[int]]:
    """TRT-LLM word list [batch?, 2, L]: row 0 = concatenated ids, row 1 = end offsets (-1 pad)."""
    if value is None:
        return []
    array = np.asarray(value)
    if array.ndim == 3:
        if array.shape[0] != 1:
            raise BadRequest(f"word list with batch {array.shape[0]}; send one request per batch item")
        array = array[0]
    if array.ndim != 2 or array.shape[0] != 2:
        raise BadRequest(f"word list must have shape [2, L], got {list(np.asarray(value).shape)}")
    ids, offsets = array[0].tolist(), array[1].tolist()
    words, begin = [], 0
    for end in offsets:
        if end < 0:
            break
        if end < begin or end > len(ids):
            raise BadRequest(f"word list offsets {offsets} do not fit {len(ids)} ids")
        if end > begin:
            words.append([int(t) for t in ids[begin:end]])
        begin = end
    return words


def _scalar(inputs: dict[str, np.ndarray], name: str, kind: type, default: Any) -> Any:
    value = inputs.get(name)
    if value is None:
        return default
    flat = np.asarray(value).reshape(-1)
    if flat.size == 0:
        return default
    if flat.size != 1:
        raise BadRequest(f"{name} must hold one value per request, got {flat.size}")
    return kind(flat[0].item())


def parse_request(inputs: dict[str, np.ndarray], request_id: str = "", *, vocab_size: int | None = None,
                  default_exclude_input: bool = True, max_input_len: int | None = None) -> BackendRequest:
    """Triton input tensors of one request (batch dim 1, as the TRT-LLM model gets them) → request."""
    if "input_ids" not in inputs:
        raise BadRequest("missing input tensor input_ids")
    ids = np.asarray(inputs["input_ids"])
    if ids.ndim == 2:
        if ids.shape[0] != 1:
            raise BadRequest(f"batch size {ids.shape[0]} > 1: send one request per prompt")
        ids = ids[0]
    length = _scalar(inputs, "input_lengths", int, ids.shape[0])
    if not 0 < length <= ids.shape[0]:
        raise BadRequest(f"input_lengths={length} but input_ids holds {ids.shape[0]} tokens")
    input_ids = [int(t) for t in ids[:length]]
    if vocab_size is not None and any(t < 0 or t >= vocab_size for t in input_ids):
        raise BadRequest(f"input_ids out of range [0, {vocab_size})")
    if max_input_len is not None and length > max_input_len:
        raise BadRequest(f"prompt of {length} tokens exceeds the model's limit of {max_input_len}")
    max_new = _scalar(inputs, "request_output_len", int, None)
    if max_new is None:
        raise BadRequest("missing input tensor request_output_len")
    if max_new < 1:
        raise BadRequest(f"request_output_len must be >= 1, got {max_new}")
    beam_width = _scalar(inputs, "beam_width", int, 1)
    if beam_width != 1:
        raise BadRequest(f"beam_width={beam_width}: the CPU reference backend only does beam_width 1")
    if decode_word_list(inputs.get("bad_words_list")):
        raise BadRequest("bad_words are not supported by the CPU reference backend")
    # Honest refusal instead of silently different output from the TensorRT-LLM engine.
    for name, neutral in (("repetition_penalty", 1.0), ("presence_penalty", 0.0), ("frequency_penalty", 0.0)):
        value = _scalar(inputs, name, float, neutral)
        if value != neutral:
            raise BadRequest(f"{name}={value} is not supported by the CPU reference backend; omit it")
    min_tokens = _scalar(inputs, "min_tokens", int, 0)
    if min_tokens > 1:
        raise BadRequest(f"min_tokens={min_tokens} is not supported by the CPU reference backend; omit it")
    temperature = _scalar(inputs, "temperature", float, 0.0)
    top_k = _scalar(inputs, "runtime_top_k", int, 0)
    top_p = _scalar(inputs, "runtime_top_p", float, 1.0)
    if temperature < 0:
        raise BadRequest(f"temperature must be >= 0, got {temperature}")
    if top_k < 0:
        raise BadRequest(f"runtime_top_k must be >= 0, got {top_k}")
    if not 0.0 <= top_p <= 1.0:
        raise BadRequest(f"runtime_top_p must be in [0, 1], got {top_p}")
    return BackendRequest(
        input_ids=input_ids,
        max_new_tokens=max_new,
        end_id=_scalar(inputs, "end_id", int, None),
        pad_id=_scalar(inputs, "pad_id", int, None),
        stop_sequences=decode_word_list(inputs.get("stop_words_list")),
        streaming=_scalar(inputs, "streaming", bool, False),
        temperature=temperature,
        top_k=top_k,
        top_p=top_p if top_p > 0 else 1.0,  # TRT-LLM treats top_p 0 as "off"
        seed=_scalar(inputs, "seed", int, None),
        exclude_input_in_output=_scalar(inputs, "exclude_input_in_output", bool, default_exclude_input),
        request_id=request_id,
        return_perf_metrics=_scalar(inputs, "return_perf_metrics", bool, False),
        return_log_probs=_scalar(inputs, "return_log_probs", bool, False),
    )


def is_stop_request(inputs: dict[str, np.ndarray]) -> bool:
    """TRT-LLM `stop` input: a request that cancels the running request with the same id."""
    return bool(_scalar(inputs, "stop", bool, False))


# --------------------------------------------------------------------------- responses


@dataclass
class PerfMetrics:
    """The TensorRT-LLM backend's `return_perf_metrics` outputs (times: steady clock, ns)."""

    arrival_time_ns: int
    first_scheduled_time_ns: int = 0
    first_token_time_ns: int = 0
    last_token_time_ns: int = 0


@dataclass
class Chunk:
    """What one response carries; the adapter turns it into output tensors."""

    output_ids: list[int]
    num_input_tokens: int
    num_output_tokens: int  # cumulative
    final: bool
    perf: PerfMetrics | None = None  # only when the request asked for it (every response, like TensorRT-LLM)
    log_probs: list[float] | None = None  # of `output_ids`, only when asked (return_log_probs)
    cum_log_prob: float = 0.0  # of every token generated so far


class Sink(Protocol):
    def send(self, chunk: Chunk) -> None: ...
    def send_error(self, message: str) -> None: ...
    def finish_cancelled(self) -> None: ...
    def is_cancelled(self) -> bool: ...


@dataclass
class _Active:
    request: BackendRequest
    sink: Sink
    session: Session | None = None
    emitted: list[int] = field(default_factory=list)
    done: bool = False
    enqueued: float = field(default_factory=time.monotonic)
    perf: PerfMetrics | None = None

    def metrics(self) -> PerfMetrics | None:
        if not self.request.return_perf_metrics:
            return None
        if self.perf is None:
            self.perf = PerfMetrics(self.request.arrival_time_ns)
        return self.perf


# --------------------------------------------------------------------------- scheduler


class Scheduler:
    """Round-robin one decode step per active session on one background thread."""

    def __init__(self, model: Model, make_sampling: Callable[[BackendRequest], Any],
                 max_active: int = DEFAULT_MAX_ACTIVE):
        if max_active < 1:
            raise ValueError("max_active must be >= 1")
        self.model = model
        self.make_sampling = make_sampling
        self.max_active = max_active
        self._cond = threading.Condition()
        self._pending: collections.deque[_Active] = collections.deque()
        self._cancelled_ids: set[str] = set()
        self._stopping = False
        self._active: list[_Active] = []
        self._thread = threading.Thread(target=self._run, name="reference-scheduler", daemon=True)
        self.steps = 0  # decode steps done, for stats and tests

    # -- public -----------------------------------------------------------
    def start(self) -> Scheduler:
        self._thread.start()
        return self

    def submit(self, request: BackendRequest, sink: Sink) -> None:
        with self._cond:
            if self._stopping:
                sink.send_error("the model is shutting down")
                return
            self._pending.append(_Active(request, sink))
            self._cond.notify()

    def cancel(self, request_id: str) -> None:
        """Drop the request(s) with this id at the next round (TRT-LLM `stop` input)."""
        if not request_id:
            return
        with self._cond:
            self._cancelled_ids.add(request_id)
            self._cond.notify()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._cond:
            leftovers = list(self._pending) + [a for a in self._active if not a.done]
            self._pending.clear()
        for item in leftovers:
            _safe(item.sink.send_error, "the model was unloaded before the request finished")

    @property
    def num_active(self) -> int:
        return len(self._active)

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    # -- loop ---------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._pending and not self._active:
                    self._cond.wait()
                if self._stopping:
                    return
                while self._pending and len(self._active) < self.max_active:
                    self._active.append(self._pending.popleft())
                cancelled, self._cancelled_ids = self._cancelled_ids, set()
            for item in self._active:
                if item.request.request_id in cancelled:
                    self._drop_cancelled(item)
                else:
                    self._advance(item)
            self._active = [item for item in self._active if not item.done]
            if cancelled:  # a `stop` for a request still waiting in the queue
                with self._cond:
                    for item in [p for p in self._pending if p.request.request_id in cancelled]:
                        self._pending.remove(item)
                        self._drop_cancelled(item)

    def _drop_cancelled(self, item: _Active) -> None:
        item.done = True
        _safe(item.sink.finish_cancelled)

    def _advance(self, item: _Active) -> None:
        request = item.request
        try:
            if item.sink.is_cancelled():
                self._drop_cancelled(item)
                return
            if item.session is None:
                perf = item.metrics()
                if perf is not None:
                    perf.first_scheduled_time_ns = time.monotonic_ns()
                item.session = self.model.start_session(
                    list(request.input_ids), self.make_sampling(request), request.stop_ids, request.max_new_tokens
                )
                if request.return_log_probs:
                    item.session.want_logprobs = True
            token = item.session.step()
            self.steps += 1
        except Exception as exc:  # noqa: BLE001 - one bad request must not stop the others
            log.error("reference backend: request %s failed:\n%s", request.request_id, traceback.format_exc())
            item.done = True
            _safe(item.sink.send_error, f"reference model failed: {exc}")
            return

        new: list[int] = []
        finished = token is None or bool(item.session.finished)
        if token is not None:
            if token in request.stop_ids:
                finished = True  # the stop token itself is not returned
            else:
                item.emitted.append(int(token))
                new = [int(token)]
                if _ends_with_any(item.emitted, request.multi_token_stops):
                    finished = True
        if len(item.emitted) >= request.max_new_tokens:
            finished = True

        log_probs, cum = None, 0.0
        if request.return_log_probs:
            all_lp = list(getattr(item.session, "logprobs", []))[:len(item.emitted)]  # the stop token is not returned
            cum = float(sum(all_lp))
            log_probs = all_lp[len(item.emitted) - len(new):] if request.streaming else \
                all_lp[:len(item.emitted)]
        perf = item.metrics()
        if perf is not None and new:
            perf.last_token_time_ns = time.monotonic_ns()
            perf.first_token_time_ns = perf.first_token_time_ns or perf.last_token_time_ns
        try:
            if request.streaming:
                if new or finished:
                    item.sink.send(Chunk(new, len(request.input_ids), len(item.emitted), finished, perf,
                                         log_probs, cum))
            elif finished:
                ids = item.emitted if request.exclude_input_in_output else request.input_ids + item.emitted
                item.sink.send(Chunk(list(ids), len(request.input_ids), len(item.emitted), True, perf, log_probs, cum))
        except Exception as exc:  # noqa: BLE001 - client went away: drop the session
            log.info("reference backend: dropping request %s: %s", request.request_id, exc)
            finished = True
        item.done = finished


def _ends_with_any(tokens: Sequence[int], sequences: list[list[int]]) -> bool:
    return any(len(tokens) >= len(seq) and list(tokens[-len(seq):]) == seq for seq in sequences)


def _safe(fn: Callable, *args) -> None:
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - the client may be gone already
        log.info("reference backend: could not deliver response: %s", exc)


# --------------------------------------------------------------------------- loading


def load_reference_model(checkpoint_dir: str | Path):
    """Load the reference model from a converted (TRT-LLM) or Hugging Face checkpoint directory."""
    import json

    from nemo_trt.reference import ReferenceModel

    directory = Path(checkpoint_dir)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no config.json in {directory}: set reference_checkpoint_dir to a checkpoint")
    config = json.loads(config_path.read_text())
    # TRT-LLM checkpoints name the class in "architecture"; HF configs in "architectures".
    if "architecture" in config:
        return ReferenceModel.from_converted(directory)
    return ReferenceModel.from_hf(directory)


def sampling_factory(request: BackendRequest):
    from nemo_trt.reference import SamplingParams

    return SamplingParams(temperature=request.temperature, top_k=request.top_k, top_p=request.top_p,
                          seed=request.seed)


def parameter(params: dict[str, Any], key: str, default: str) -> str:
    """A config.pbtxt parameter; unfilled `${...}` placeholders fall back to the default."""
    value = params.get(key)
    if isinstance(value, dict):
        value = value.get("string_value")
    if value is None or str(value).strip() == "" or str(value).startswith("${"):
        return default
    return str(value)


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "t", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "f", "no", "n", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")
