"""Typed client for the nemo-trt Triton ensemble (gRPC stream or HTTP generate_stream).

Used by `nemo-trt chat`, `nemo-trt regress` and `nemo-trt demo`; keep it small and stable.

Both protocols go through the *streaming* APIs: the `tensorrt_llm` step is decoupled,
so unary gRPC `ModelInfer` is rejected (UNIMPLEMENTED) and HTTP `/generate` answers
"generate expects model to produce exactly 1 response" with HTTP 200 (cpu-triton.md §7).
A non-streamed generation is therefore a stream request with `stream=false`, which the
server answers with a single response.

The prompt length (`return_num_input_tokens`) is not part of the ensemble's stream: the
ensemble is preprocessing -> tensorrt_llm -> postprocessing, and a Triton ensemble may not
mix outputs of a step before the decoupled `tensorrt_llm` with those after it. It is asked
from the `preprocessing` model itself (one unary call, the same rendering the ensemble uses).

Response semantics (the contract of the nemo-trt ensemble):
- `text_output`, `reasoning_output`, `answer_output` of a streamed response are *deltas*;
  concatenated they equal the non-streamed texts.
- `num_output_tokens` is the cumulative count of generated tokens so far.
"""
from __future__ import annotations

import json
import queue
import time
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from nemo_trt.errors import NemoTrtError

Protocol = Literal["grpc", "http"]
DEFAULT_MODEL_NAME = "ensemble"
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
TEXT_OUTPUTS = ("text_output", "reasoning_output", "answer_output")


class GenerateError(NemoTrtError):
    """The server answered a request with an error (bad input, model failure)."""

    def __init__(self, problem: str, fix: str | None = None):
        super().__init__(problem, fix, exit_code=1)


class ServerUnavailable(NemoTrtError):
    """Nothing listens at the URL, or the model is not ready."""


class GenerateRequest(BaseModel):
    """One generation request; exactly one of `prompt` (raw text) or `messages` (chat turns)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    reasoning: Literal["on", "off"] | None = None
    max_tokens: int = Field(256, ge=1)
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    seed: int | None = Field(None, ge=0)
    stop_words: list[str] = Field(default_factory=list)
    bad_words: list[str] = Field(default_factory=list)
    end_id: int | None = None
    pad_id: int | None = None
    exclude_input_in_output: bool = True
    return_num_input_tokens: bool = False  # ask for the prompt length the server tokenized (regress checks it)
    request_id: str | None = None
    model: str = DEFAULT_MODEL_NAME

    @model_validator(mode="after")
    def _one_input(self) -> GenerateRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        return self

    def tensors(self, stream: bool) -> dict[str, tuple[np.ndarray, str]]:
        """Ensemble input name -> (value without batch dim, Triton datatype); only what is set."""
        out: dict[str, tuple[np.ndarray, str]] = {}

        def add(name: str, values: list, dtype, triton_type: str) -> None:
            out[name] = (np.array(values, dtype=dtype), triton_type)

        if self.prompt is not None:
            add("text_input", [self.prompt.encode()], object, "BYTES")
        else:
            add("messages", [json.dumps(self.messages).encode()], object, "BYTES")
        add("max_tokens", [self.max_tokens], np.int32, "INT32")
        add("stream", [stream], bool, "BOOL")
        add("exclude_input_in_output", [self.exclude_input_in_output], bool, "BOOL")
        if self.reasoning is not None:
            add("reasoning", [self.reasoning.encode()], object, "BYTES")
        if self.temperature is not None:
            add("temperature", [self.temperature], np.float32, "FP32")
        if self.top_p is not None:
            add("top_p", [self.top_p], np.float32, "FP32")
        if self.top_k is not None:
            add("top_k", [self.top_k], np.int32, "INT32")
        if self.seed is not None:
            add("seed", [self.seed], np.uint64, "UINT64")
        if self.end_id is not None:
            add("end_id", [self.end_id], np.int32, "INT32")
        if self.pad_id is not None:
            add("pad_id", [self.pad_id], np.int32, "INT32")
        if self.stop_words:
            add("stop_words", [w.encode() for w in self.stop_words], object, "BYTES")
        if self.bad_words:
            add("bad_words", [w.encode() for w in self.bad_words], object, "BYTES")
        return out

    def preprocessing_tensors(self) -> dict[str, tuple[np.ndarray, str]]:
        """The `preprocessing` model's inputs for this request (to ask it for the prompt length)."""
        names = {"text_input": "QUERY", "messages": "MESSAGES", "reasoning": "REASONING",
                 "max_tokens": "REQUEST_OUTPUT_LEN"}
        return {names[k]: v for k, v in self.tensors(False).items() if k in names}

    def generate_body(self, stream: bool) -> dict[str, Any]:
        """JSON body for HTTP `/generate[_stream]`: top-level keys map onto model inputs."""
        body: dict[str, Any] = {}
        for name, (value, _) in self.tensors(stream).items():
            items = [v.decode() if isinstance(v, bytes) else v.item() for v in value]
            body[name] = items if name in ("stop_words", "bad_words") else items[0]
        return body


@dataclass
class Delta:
    """One streamed response."""

    text: str = ""
    reasoning: str = ""
    answer: str = ""
    num_output_tokens: int | None = None  # cumulative, when the server reports it
    time: float = 0.0  # seconds since the request was sent
    token_ids: list[int] = field(default_factory=list)
    num_input_tokens: int | None = None  # prompt length as the server tokenized it, when reported


@dataclass
class Result:
    text: str
    reasoning: str
    answer: str
    token_ids: list[int] | None
    num_output_tokens: int | None
    finish_reason: Literal["stop", "length"] | None
    ttft: float | None  # time to first token (s)
    itl: float | None  # mean inter-token latency between streamed deltas (s)
    total_time: float
    num_responses: int
    num_input_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def normalize_url(url: str | None, protocol: Protocol) -> str:
    """`host:port` for gRPC, `http://host:port` for HTTP; defaults to 127.0.0.1 and Triton's ports."""
    if not url:
        url = f"127.0.0.1:{DEFAULT_PORTS[protocol]}"
    bare = url.split("://", 1)[-1].rstrip("/")
    if ":" not in bare:
        bare = f"{bare}:{DEFAULT_PORTS[protocol]}"
    return bare if protocol == "grpc" else f"http://{bare}"


def _first(value: Any) -> Any:
    while isinstance(value, (list, tuple, np.ndarray)):
        if len(value) == 0:
            return None
        value = value[0]
    return value


def _text(value: Any) -> str:
    value = _first(value)
    if value is None:
        return ""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _delta_from(outputs: dict[str, Any], elapsed: float) -> Delta:
    count = _first(outputs.get("num_output_tokens"))
    prompt_len = _first(outputs.get("num_input_tokens"))
    ids = outputs.get("output_ids")
    token_ids = [int(t) for t in np.asarray(ids).reshape(-1)] if ids is not None else []
    return Delta(
        text=_text(outputs.get("text_output")),
        reasoning=_text(outputs.get("reasoning_output")),
        answer=_text(outputs.get("answer_output")),
        num_output_tokens=int(count) if count is not None else None,
        time=elapsed,
        token_ids=token_ids,
        num_input_tokens=int(prompt_len) if prompt_len is not None else None,
    )


# --------------------------------------------------------------------------- gRPC


def _grpc_client(url: str):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(url=url)


def _probe(check) -> bool:
    try:
        return bool(check())
    except Exception:  # noqa: BLE001 - any failure here means the answer is "no"
        return False


def _unavailable_or(cause: Exception, *, url: str, model: str, protocol: Protocol, live, ready) -> NemoTrtError:
    """Turn a failed call into 'server down' / 'model not ready' when that is the cause."""
    if not _probe(live):
        return ServerUnavailable(
            f"cannot reach Triton over {protocol} at {url}: {cause}",
            "start it with `nemo-trt serve --repo REPO` or pass the right --url/--protocol",
        )
    if not _probe(ready):
        return ServerUnavailable(
            f"model {model!r} is not ready on the Triton server at {url}",
            "check the server log for load errors, or wait until `/v2/health/ready` answers 200",
        )
    return GenerateError(f"request failed: {cause}")


def _explain_unavailable(client, url: str, model: str, protocol: Protocol, cause: Exception) -> NemoTrtError:
    return _unavailable_or(cause, url=url, model=model, protocol=protocol,
                           live=client.is_server_live, ready=lambda: client.is_model_ready(model))


def _grpc_stream(url: str | None, request: GenerateRequest, stream: bool, timeout: float
                 ) -> Generator[Delta, None, None]:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    url = normalize_url(url, "grpc")
    client = _grpc_client(url)
    inputs = []
    for name, (value, triton_type) in request.tensors(stream).items():
        tensor = grpcclient.InferInput(name, [1, *value.shape], triton_type)
        tensor.set_data_from_numpy(value.reshape(1, *value.shape))
        inputs.append(tensor)

    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    finished = False
    try:
        start = time.perf_counter()
        try:
            client.async_stream_infer(
                request.model,
                inputs,
                request_id=request.request_id or uuid.uuid4().hex,
                enable_empty_final_response=True,
            )
        except InferenceServerException as exc:
            # The stream broke before the request went out; the cause comes through the callback.
            try:
                _, cause = responses.get(timeout=1.0)
            except queue.Empty:
                cause = exc
            raise _classify_error(client, url, request.model, cause or exc) from None
        while True:
            try:
                result, error = responses.get(timeout=timeout)
            except queue.Empty:
                raise GenerateError(
                    f"no response from {url} within {timeout:.0f} s", "raise the timeout or check the server log"
                ) from None
            if error is not None:
                raise _classify_error(client, url, request.model, error)
            response = result.get_response()
            outputs = {o.name: result.as_numpy(o.name) for o in response.outputs}
            if outputs:
                yield _delta_from(outputs, time.perf_counter() - start)
            final = response.parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                finished = True
                return
    finally:
        try:
            # A consumer that stops early (Ctrl-C, break) cancels the request on the server.
            client.stop_stream(cancel_requests=not finished)
        finally:
            client.close()


def _classify_error(client, url: str, model: str, error: Exception) -> NemoTrtError:
    message = str(error)
    status = str(getattr(error, "status", lambda: "")() or "")
    lowered = message.lower()
    if ("UNAVAILABLE" in status or "Socket closed" in message
            or "failed to connect" in lowered or "unavailable" in lowered):
        return _explain_unavailable(client, url, model, "grpc", error)
    if "unknown model" in lowered or "is not ready" in lowered:
        return _explain_unavailable(client, url, model, "grpc", error)
    return GenerateError(f"the server rejected the request: {message}")


# --------------------------------------------------------------------------- HTTP


def _http_check(url: str, model: str, cause: Exception) -> NemoTrtError:
    import urllib.request

    def ok(path: str) -> bool:
        with urllib.request.urlopen(f"{url}{path}", timeout=5) as response:
            return response.status == 200

    return _unavailable_or(cause, url=url, model=model, protocol="http",
                           live=lambda: ok("/v2/health/live"), ready=lambda: ok(f"/v2/models/{model}/ready"))


def _http_stream(url: str | None, request: GenerateRequest, stream: bool, timeout: float
                 ) -> Generator[Delta, None, None]:
    import urllib.error
    import urllib.request

    url = normalize_url(url, "http")
    body = request.generate_body(stream)
    body["id"] = request.request_id or uuid.uuid4().hex
    http_request = urllib.request.Request(
        f"{url}/v2/models/{request.model}/generate_stream",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
        method="POST",
    )
    start = time.perf_counter()
    try:
        response = urllib.request.urlopen(http_request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        try:
            detail = json.loads(detail).get("error", detail)
        except ValueError:
            pass
        if exc.code == 404 or "unknown model" in detail.lower() or "not ready" in detail.lower():
            raise _http_check(url, request.model, RuntimeError(detail)) from None
        raise GenerateError(f"the server rejected the request (HTTP {exc.code}): {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise _http_check(url, request.model, exc) from None
    with response:
        # SSE: `data: {json}` lines separated by blank lines; no terminating event (Triton 2.51).
        for raw in response:
            line = raw.decode("utf-8", errors="replace").strip()
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:].strip())
            if "error" in event:  # errors after the first chunk arrive inside a 200 stream
                raise GenerateError(f"the server rejected the request: {event['error']}")
            yield _delta_from(event, time.perf_counter() - start)


# --------------------------------------------------------------------------- prompt length


PREPROCESSING_MODEL = "preprocessing"


def prompt_tokens(url: str | None, request: GenerateRequest, protocol: Protocol = "grpc",
                  timeout: float = 60.0) -> int:
    """The prompt length the server's preprocessing renders for `request` (chat template included)."""
    if protocol == "grpc":
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        url = normalize_url(url, "grpc")
        client = _grpc_client(url)
        try:
            inputs = []
            for name, (value, triton_type) in request.preprocessing_tensors().items():
                tensor = grpcclient.InferInput(name, [1, *value.shape], triton_type)
                tensor.set_data_from_numpy(value.reshape(1, *value.shape))
                inputs.append(tensor)
            try:
                result = client.infer(PREPROCESSING_MODEL, inputs, client_timeout=timeout)
            except InferenceServerException as exc:
                raise _classify_error(client, url, PREPROCESSING_MODEL, exc) from None
            return int(result.as_numpy("REQUEST_INPUT_LEN").reshape(-1)[0])
        finally:
            client.close()
    import urllib.error
    import urllib.request

    url = normalize_url(url, "http")
    body = {"inputs": [{"name": name, "shape": [1, *value.shape], "datatype": triton_type,
                        "data": [v.decode() if isinstance(v, bytes) else v.item() for v in value]}
                       for name, (value, triton_type) in request.preprocessing_tensors().items()],
            "outputs": [{"name": "REQUEST_INPUT_LEN"}]}
    http_request = urllib.request.Request(f"{url}/v2/models/{PREPROCESSING_MODEL}/infer",
                                          data=json.dumps(body).encode(),
                                          headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(http_request, timeout=timeout) as response:
            outputs = json.loads(response.read())["outputs"]
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise GenerateError(f"the server rejected the request (HTTP {exc.code}): {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise _http_check(url, PREPROCESSING_MODEL, exc) from None
    return int(outputs[0]["data"][0])


# --------------------------------------------------------------------------- API


def stream_generate(
    url: str | None, request: GenerateRequest, protocol: Protocol = "grpc", timeout: float = 300.0
) -> Generator[Delta, None, None]:
    """Stream deltas, one per generated token (as the server sends them); close() it to stop early."""
    if protocol == "grpc":
        return _grpc_stream(url, request, True, timeout)
    if protocol == "http":
        return _http_stream(url, request, True, timeout)
    raise NemoTrtError(f"unknown protocol {protocol!r}", "use grpc or http")


def collect(deltas: Iterator[Delta], request: GenerateRequest, start_time: float | None = None) -> Result:
    """Fold a stream of deltas into a Result (texts, counts and timings)."""
    start = time.perf_counter() if start_time is None else start_time
    text, reasoning, answer, ids, times = [], [], [], [], []
    count: int | None = None
    prompt_len: int | None = None
    n = 0
    for delta in deltas:
        n += 1
        if prompt_len is None and delta.num_input_tokens is not None:
            prompt_len = delta.num_input_tokens
        text.append(delta.text)
        reasoning.append(delta.reasoning)
        answer.append(delta.answer)
        ids.extend(delta.token_ids)
        if delta.num_output_tokens is not None:
            count = delta.num_output_tokens if count is None else max(count, delta.num_output_tokens)
        if delta.text or delta.token_ids or delta.num_output_tokens:
            times.append(delta.time)
    total = time.perf_counter() - start
    if count is None and ids:
        count = len(ids)
    finish: Literal["stop", "length"] | None = (
        None if count is None else ("length" if count >= request.max_tokens else "stop"))
    gaps = [b - a for a, b in zip(times, times[1:])]
    return Result(
        text="".join(text),
        reasoning="".join(reasoning),
        answer="".join(answer),
        token_ids=ids or None,
        num_output_tokens=count,
        finish_reason=finish,
        ttft=times[0] if times else None,
        itl=(sum(gaps) / len(gaps)) if gaps else None,
        total_time=total,
        num_responses=n,
        num_input_tokens=prompt_len,
    )


def generate(
    url: str | None,
    request: GenerateRequest,
    protocol: Protocol = "grpc",
    stream: bool = False,
    timeout: float = 300.0,
) -> Result:
    """One full generation. `stream=False` asks the server for a single response."""
    start = time.perf_counter()
    if protocol == "grpc":
        deltas = _grpc_stream(url, request, stream, timeout)
    elif protocol == "http":
        deltas = _http_stream(url, request, stream, timeout)
    else:
        raise NemoTrtError(f"unknown protocol {protocol!r}", "use grpc or http")
    result = collect(deltas, request, start)
    if request.return_num_input_tokens and result.num_input_tokens is None:
        result.num_input_tokens = prompt_tokens(url, request, protocol, timeout)
    return result


def wait_until_ready(url: str | None, protocol: Protocol = "grpc", model: str = DEFAULT_MODEL_NAME,
                     timeout: float = 60.0) -> None:
    """Block until the model is ready (for scripts that start a server elsewhere)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if protocol == "grpc":
                client = _grpc_client(normalize_url(url, "grpc"))
                try:
                    if client.is_model_ready(model):
                        return
                finally:
                    client.close()
            else:
                import urllib.request

                with urllib.request.urlopen(f"{normalize_url(url, 'http')}/v2/models/{model}/ready", timeout=5) as r:
                    if r.status == 200:
                        return
        except Exception as exc:  # noqa: BLE001 - keep polling
            last = exc
        time.sleep(0.2)
    raise ServerUnavailable(
        f"model {model!r} not ready at {url} after {timeout:.0f} s" + (f" ({last})" if last else ""),
        "check that the server is running and its log for model load errors",
    )
