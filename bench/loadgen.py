"""Concurrent streaming load on a Triton LLM ensemble, over gRPC and HTTP, in one asyncio loop.

Used by the stress test (tests/test_serving_stress.py), the soak and the stock comparison
(bench/bench_serving_stock.py). It is lean on purpose: the clients share the 2 cores with the
server, so each response costs one protobuf parse (gRPC, grpc.aio with tritonclient's
protos) or one JSON parse (HTTP `generate_stream`, a small HTTP/1.1 client on asyncio
streams) and no tritonclient result objects.

A `Client` runs requests back to back (one at a time, like a chat user), each described by a
`Job`; every request's outcome is a `Record`: tokens, texts, the longest wait for a response
(the hang detector), the error if any. `Load.run()` starts N clients for a duration, counts
delivered tokens per time window and returns every record.
"""
from __future__ import annotations

import asyncio
import json
import random
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from nemo_trt.serve.token_ensemble import token_ids
from nemo_trt.serve.triton_request import Tensor, infer_request

TEXT_NAMES = ("text_output", "reasoning_output", "answer_output")


@dataclass
class Job:
    """One request. `inputs`: ensemble input name -> Python value (str, bool, int, float, list of str)."""

    inputs: dict[str, Any]
    stream: bool = True
    disconnect_after: int | None = None  # drop the connection after this many data responses
    expect_error: bool = False  # a malformed request: an error answer is the right outcome
    expected: dict[str, str] | None = None  # text name -> the exact text the request must produce
    label: str = ""
    outputs: tuple[str, ...] = ()  # requested outputs (empty: all)
    model: str | None = None  # another model than the Load's (e.g. ensemble_tokens)
    # ensemble_tokens over gRPC: the client makes the texts from output_ids, as a real client of
    # that model does (a fresh nemo_trt.serve.postprocess.TextStream per request, flushed at the end)
    text_stream: Callable[[], Any] | None = None


@dataclass
class Record:
    job: Job
    protocol: str
    start: float
    end: float = 0.0
    first: float | None = None  # arrival of the first data response
    responses: int = 0
    tokens: int = 0
    max_gap_s: float = 0.0  # longest wait between sending / responses
    last: float = 0.0  # arrival of the latest response (0: none yet)
    texts: dict[str, bytearray] = field(default_factory=dict)
    error: str | None = None
    disconnected: bool = False
    final: bool = False
    token_times: list[tuple[float, int]] = field(default_factory=list)

    def text(self, name: str = "text_output") -> str:
        return bytes(self.texts.get(name, b"")).decode("utf-8", errors="replace")

    def problems(self) -> list[str]:
        """What is wrong with this outcome (empty: as expected)."""
        job = self.job
        if self.disconnected:
            return []
        if job.expect_error:
            return [] if self.error else [f"{job.label}: expected an error, got an answer"]
        if self.error:
            return [f"{job.label}: error {self.error}"]
        if not self.final:
            return [f"{job.label}: no final response"]
        out = []
        for name, want in (job.expected or {}).items():
            got = bytes(self.texts.get(name, b""))
            if got != want.encode("utf-8"):
                out.append(f"{job.label}: {name} differs: got {got[:80]!r}... ({len(got)} bytes), "
                           f"want {want[:80]!r}... ({len(want.encode())} bytes)")
        return out


# --------------------------------------------------------------------------- tensors


def _tensor(name: str, value: Any) -> Tensor:
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, float) for v in value):
        return name, "FP32", list(value)
    if isinstance(value, (list, tuple)):
        return name, "BYTES", list(value)
    if isinstance(value, (str, bytes)):
        return name, "BYTES", [value]
    if isinstance(value, bool):
        return name, "BOOL", [value]
    if isinstance(value, float):
        return name, "FP32", [value]
    if isinstance(value, int):
        return name, "INT32", [value]
    raise TypeError(f"{name}: cannot send {type(value).__name__}")


def grpc_request(model: str, job: Job, request_id: str) -> service_pb2.ModelInferRequest:
    return infer_request(model, [_tensor(name, value) for name, value in job.inputs.items()], list(job.outputs),
                         request_id)


def _bytes_elements(raw: bytes) -> list[bytes]:
    out, offset = [], 0
    while offset + 4 <= len(raw):
        (n,) = struct.unpack_from("<I", raw, offset)
        out.append(raw[offset + 4:offset + 4 + n])
        offset += 4 + n
    return out


def _client_side_text(stream_text: Any, response: Any, final: bool) -> tuple[int, dict[str, bytes]]:
    """One ensemble_tokens response -> (tokens, {text name: delta}) through the request's TextStream."""
    ids = token_ids({tensor.name: raw for tensor, raw in zip(response.outputs, response.raw_output_contents)})
    delta = stream_text.feed(ids)
    parts = [delta.text, delta.reasoning, delta.answer]
    if final:
        tail = stream_text.finish()
        parts = [parts[0] + tail.text, parts[1] + tail.reasoning, parts[2] + tail.answer]
    return len(ids), {name: part.encode() for name, part in zip(TEXT_NAMES, parts)}


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


# --------------------------------------------------------------------------- clients


class Client:
    """Sends jobs one after another over one protocol; `records` collects the outcomes."""

    def __init__(self, load: Load, protocol: str, index: int):
        self.load = load
        self.protocol = protocol
        self.index = index
        self.records: list[Record] = []

    def _on_data(self, record: Record, now: float, tokens: int, texts: dict[str, bytes]) -> None:
        record.responses += 1
        record.tokens += tokens
        if record.first is None:
            record.first = now
        for name, value in texts.items():
            record.texts.setdefault(name, bytearray()).extend(value)
        if tokens:
            self.load.delivered(now, tokens)
            if self.load.keep_token_times:
                record.token_times.append((now, tokens))

    def _gap(self, record: Record, last: float, now: float) -> None:
        record.max_gap_s = max(record.max_gap_s, now - last)
        record.last = now

    async def run(self, jobs: Callable[[], Job], until: float) -> None:
        if self.protocol == "grpc":
            await self._run_grpc(jobs, until)
        else:
            await self._run_http(jobs, until)

    # -- gRPC: one bidi stream, reopened after a disconnect ------------------------------
    async def _run_grpc(self, jobs: Callable[[], Job], until: float) -> None:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(self.load.channel)
        call = None
        try:
            while time.monotonic() < until:
                job = jobs()
                if call is None:
                    call = stub.ModelStreamInfer()
                record = Record(job, "grpc", time.monotonic())
                self.records.append(record)
                try:
                    await call.write(grpc_request(job.model or self.load.model, job, uuid.uuid4().hex))
                except grpc.aio.AioRpcError as exc:
                    record.error = f"stream ended: {exc.code().name}: {exc.details()}"
                    await asyncio.sleep(0.1)
                    ok = False
                else:
                    ok = await self._read_grpc(call, record)
                if not ok:
                    call.cancel()  # the client goes away mid-stream
                    call = None
                record.end = time.monotonic()
        finally:
            if call is not None:
                call.cancel()

    async def _read_grpc(self, call, record: Record) -> bool:
        """Read one request's responses; False when the job disconnects (the stream is dropped)."""
        last = record.start
        stream_text = record.job.text_stream() if record.job.text_stream is not None else None
        timeout = self.load.response_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(call.read(), timeout)
            except asyncio.TimeoutError:
                record.error = f"no response for {timeout} s (hung)"
                record.max_gap_s = max(record.max_gap_s, timeout)
                return False
            except grpc.aio.AioRpcError as exc:  # the server went away (or reset the stream)
                record.error = f"stream ended: {exc.code().name}: {exc.details()}"
                return False
            now = time.monotonic()
            self._gap(record, last, now)
            last = now
            if message is grpc.aio.EOF:
                record.error = "stream closed by the server"
                return False
            if message.error_message:
                record.error = message.error_message
                record.final = True
                return True
            response = message.infer_response
            final = response.parameters["triton_final_response"].bool_param \
                if "triton_final_response" in response.parameters else True
            if stream_text is not None:
                tokens, texts = _client_side_text(stream_text, response, final)
                self._on_data(record, now, tokens, texts)
            elif response.outputs:
                texts, count = {}, None
                for tensor, raw in zip(response.outputs, response.raw_output_contents):
                    if tensor.name in TEXT_NAMES:
                        texts[tensor.name] = b"".join(_bytes_elements(raw))
                    elif tensor.name == "output_ids":
                        count = _count(tensor.shape)
                self._on_data(record, now, 1 if count is None else count, texts)  # stock: one token per response
            if stream_text is not None or response.outputs:
                if record.job.disconnect_after is not None and record.responses >= record.job.disconnect_after:
                    record.disconnected = True
                    return False
            if final:
                record.final = True
                return True

    # -- HTTP generate_stream (SSE) ------------------------------------------------------
    async def _run_http(self, jobs: Callable[[], Job], until: float) -> None:
        while time.monotonic() < until:
            job = jobs()
            record = Record(job, "http", time.monotonic())
            self.records.append(record)
            try:
                await self._http_request(job, record)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                record.error = record.error or f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0.1)  # e.g. connection refused: do not spin
            record.end = time.monotonic()

    async def _http_request(self, job: Job, record: Record) -> None:
        body = {name: value for name, value in job.inputs.items()}
        body["id"] = uuid.uuid4().hex
        payload = json.dumps(body).encode()
        endpoint = "generate_stream" if job.stream else "generate"
        reader, writer = await asyncio.open_connection(self.load.http_host, self.load.http_port)
        try:
            writer.write(f"POST /v2/models/{self.load.model}/{endpoint} HTTP/1.1\r\nHost: {self.load.http_host}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                         "Connection: close\r\n\r\n".encode() + payload)
            await writer.drain()
            timeout = self.load.response_timeout_s
            status = await asyncio.wait_for(reader.readline(), timeout)
            headers = {}
            while True:
                line = await asyncio.wait_for(reader.readline(), timeout)
                if line in (b"\r\n", b""):
                    break
                key, _, value = line.decode().partition(":")
                headers[key.strip().lower()] = value.strip()
            parts = status.split()
            if len(parts) < 2 or not parts[1].isdigit():
                record.error = f"no HTTP status line (the connection ended after {status!r})"
                return
            code = int(parts[1])
            last = time.monotonic()
            buffer = b""
            async for chunk in _http_body(reader, headers, timeout):
                now = time.monotonic()
                self._gap(record, last, now)
                last = now
                buffer += chunk
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    if self._http_event(event, record, now, code):
                        return
                if not job.stream and code != 200:
                    continue
            if buffer.strip():
                self._http_event(buffer, record, time.monotonic(), code)
            if not job.stream and code == 200 and not record.responses:
                self._http_json(buffer, record, time.monotonic())
            record.final = record.final or (code == 200 and record.error is None)
            if code != 200 and record.error is None:
                record.error = f"HTTP {code}: {buffer[:200]!r}"
        except asyncio.TimeoutError:
            record.error = f"no response for {self.load.response_timeout_s} s (hung)"
        finally:
            writer.close()

    def _http_event(self, event: bytes, record: Record, now: float, code: int) -> bool:
        """One SSE event (or the whole JSON body of /generate); True to stop reading (disconnect/error)."""
        text = event.decode("utf-8", errors="replace")
        data = text[len("data: "):] if text.startswith("data: ") else text
        if not data.strip():
            return False
        self._http_json(data.encode(), record, now)
        if record.error:
            record.final = True
            return True
        job = record.job
        if job.disconnect_after is not None and record.responses >= job.disconnect_after:
            record.disconnected = True
            return True
        return False

    def _http_json(self, raw: bytes, record: Record, now: float) -> None:
        try:
            message = json.loads(raw)
        except json.JSONDecodeError:
            record.error = f"not JSON: {raw[:200]!r}"
            return
        if "error" in message:
            record.error = message["error"]
            return
        texts = {name: str(message[name]).encode("utf-8") for name in TEXT_NAMES if name in message}
        ids = message.get("output_ids")
        tokens = len(ids) if isinstance(ids, list) else 1
        self._on_data(record, now, tokens, texts)


async def _http_body(reader: asyncio.StreamReader, headers: dict[str, str], timeout: float):
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await asyncio.wait_for(reader.readline(), timeout)
            size = int(size_line.strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                return
            data = await asyncio.wait_for(reader.readexactly(size + 2), timeout)
            yield data[:-2]
    elif "content-length" in headers:
        yield await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout)
    else:
        while chunk := await asyncio.wait_for(reader.read(65536), timeout):
            yield chunk


# --------------------------------------------------------------------------- the load


class Load:
    """N clients against one model for `duration_s`; tokens delivered per `window_s` window."""

    def __init__(self, model: str, grpc_url: str | None = None, http_url: str | None = None, *,
                 window_s: float = 1.0, response_timeout_s: float = 10.0, keep_token_times: bool = False,
                 seed: int = 0):
        self.model = model
        self.grpc_url = grpc_url
        self.http_host, _, port = (http_url or "127.0.0.1:0").partition(":")
        self.http_port = int(port or 0)
        self.window_s = window_s
        self.response_timeout_s = response_timeout_s
        self.keep_token_times = keep_token_times
        self.random = random.Random(seed)
        self.channel = None
        self._start = 0.0
        self.windows: list[int] = []
        self.clients: list[Client] = []  # of the run in progress (for on_tick)

    def delivered(self, now: float, tokens: int) -> None:
        index = int((now - self._start) / self.window_s)
        if index >= 0:
            while len(self.windows) <= index:
                self.windows.append(0)
            self.windows[index] += tokens

    async def _ticker(self, until: float, on_tick: Callable[[float], Any]) -> None:
        while time.monotonic() < until:
            await asyncio.sleep(0.5)
            on_tick(time.monotonic())

    async def _run(self, protocols: list[str], jobs: Callable[[Client], Job], duration_s: float,
                   on_tick: Callable[[float], Any] | None) -> list[Client]:
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        self.channel = grpc.aio.insecure_channel(self.grpc_url, options=options) if self.grpc_url else None
        try:
            self._start = time.monotonic()
            until = self._start + duration_s
            clients = self.clients = [Client(self, protocol, i) for i, protocol in enumerate(protocols)]
            tasks = [c.run(lambda c=c: jobs(c), until) for c in clients]
            if on_tick is not None:
                tasks.append(self._ticker(until, on_tick))
            await asyncio.gather(*tasks)
            return clients
        finally:
            if self.channel is not None:
                await self.channel.close()

    def run(self, protocols: list[str], jobs: Callable[[Client], Job], duration_s: float,
            on_tick: Callable[[float], Any] | None = None) -> list[Record]:
        """Run one client per entry of `protocols` ("grpc" / "http") for `duration_s`; every
        client's records. `on_tick(now)` is called about every 0.5 s meanwhile (e.g. to sample RSS)."""
        self.windows = []
        clients = asyncio.run(self._run(protocols, jobs, duration_s, on_tick))
        return [r for c in clients for r in c.records]


def tokens_per_second(load: Load, skip_windows: int = 1) -> list[float]:
    """Delivered tokens/s per complete window (the first `skip_windows` are warm-up)."""
    full = load.windows[skip_windows:-1]  # the last window is cut by the end of the run
    return [w / load.window_s for w in full]
