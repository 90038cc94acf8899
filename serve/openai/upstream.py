"""The gateway's only way into Triton: gRPC streams to the `ensemble` (grpc.aio, with
tritonclient's protobuf service; tritonclient's aio client for health, configs and unary calls).

Persistent bidirectional stream calls on a shared channel (HTTP/2 multiplexes them).
The ensemble is decoupled, so even a non-streamed generation goes through the stream API
(`stream=false` makes it answer once); its end is the `triton_final_response` parameter,
which the nemo-trt ensemble sends together with the last data response (the aio API has
no opt-in for empty final responses; openai-gateway.md §9). Closing the iterator early
cancels the gRPC call, which cancels the request inside Triton (generate checks it).

Requests are built as protobufs straight from their values; only the outputs the gateway
reads are requested, and they are read straight from the response's raw contents (one
element each): no numpy round trip per request or per streamed token.

With the served tokenizer at hand (and the repository's identity confirming it is the
served one) the gateway calls `ensemble_tokens` instead and turns ids into text itself
(nemo_trt.serve.token_ensemble says why): one IncrementalDetokenizer per generation, flushed
on the final response.
"""
from __future__ import annotations

import asyncio
import json
import logging
import struct
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from nemo_trt.serve.detokenize import IncrementalDetokenizer
from nemo_trt.serve.token_ensemble import TOKEN_ENSEMBLE, TOKEN_OUTPUTS, token_ids
from nemo_trt.serve.triton_request import Tensor, infer_request

ENSEMBLE = "ensemble"
PREPROCESSING = "preprocessing"
log = logging.getLogger("nemo_trt.openai")


class UpstreamError(Exception):
    """kind: unavailable (Triton down), not_ready (model not loaded), rejected (the ensemble
    refused the request: the client's input), failed (a model failed)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class UpstreamRequest:
    """One generation as the ensemble takes it (only what is set is sent)."""

    messages: list[dict[str, Any]]
    reasoning: str | None = None
    tools: str | None = None  # OpenAI tools JSON
    continue_final: bool = False
    max_tokens: int | None = None
    stream: bool = True
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    stop_words: list[str] = field(default_factory=list)
    return_log_probs: bool = False
    want_ids: bool = False
    request_id: str = ""

    def tensors(self) -> list[Tensor]:
        """The ensemble's inputs for this generation (only what is set)."""
        out: list[Tensor] = [("messages", "BYTES", [json.dumps(self.messages, ensure_ascii=False)]),
                                                 ("stream", "BOOL", [self.stream])]
        optional = (("reasoning", "BYTES", self.reasoning), ("tools", "BYTES", self.tools),
                    ("continue_final", "BOOL", self.continue_final or None),
                    ("max_tokens", "INT32", self.max_tokens), ("temperature", "FP32", self.temperature),
                    ("top_p", "FP32", self.top_p), ("presence_penalty", "FP32", self.presence_penalty),
                    ("frequency_penalty", "FP32", self.frequency_penalty),
                    ("repetition_penalty", "FP32", self.repetition_penalty), ("top_k", "INT32", self.top_k),
                    ("min_tokens", "INT32", self.min_tokens), ("seed", "UINT64", self.seed))
        out += [(name, datatype, [value]) for name, datatype, value in optional if value is not None]
        if self.stop_words:
            out.append(("stop_words", "BYTES", list(self.stop_words)))
        if self.return_log_probs:
            out.append(("return_log_probs", "BOOL", [True]))
        return out

    def infer_request(self, model: str, outputs: list[str]) -> Any:
        """The ModelInferRequest protobuf of this generation."""
        return infer_request(model, self.tensors(), outputs, self.request_id)

    def outputs(self, available: frozenset[str] = frozenset()) -> list[str]:
        """What the gateway reads, of what the ensemble has (`num_input_tokens` is not in every
        layout's stream: then preprocessing is asked, `TritonUpstream.prompt_tokens`)."""
        names = ["text_output", "num_output_tokens", "num_input_tokens"]
        if self.want_ids or self.return_log_probs:
            names.append("output_ids")
        if self.return_log_probs:
            names.append("output_log_probs")
        return [n for n in names if not available or n in available]

    def token_outputs(self) -> list[str]:
        """What the gateway reads of `ensemble_tokens`."""
        return [*TOKEN_OUTPUTS, "output_log_probs"] if self.return_log_probs else list(TOKEN_OUTPUTS)

    def preprocessing_tensors(self) -> list[Tensor]:
        """The `preprocessing` model's inputs for this request (to ask it for the prompt length)."""
        names = {"messages": "MESSAGES", "reasoning": "REASONING", "tools": "TOOLS",
                 "continue_final": "CONTINUE_FINAL", "max_tokens": "REQUEST_OUTPUT_LEN"}
        return [(names[n], t, v) for n, t, v in self.tensors() if n in names]


@dataclass(slots=True)
class UpstreamDelta:
    text: str
    num_output_tokens: int | None  # cumulative for this request
    num_input_tokens: int | None
    token_ids: list[int] | None
    log_probs: list[float] | None
    final: bool


def _bytes_element(raw: bytes) -> str:
    """First element of a serialized BYTES tensor (4-byte little-endian length + data)."""
    if len(raw) < 4:
        return ""
    (size,) = struct.unpack_from("<I", raw, 0)
    return raw[4:4 + size].decode("utf-8", errors="replace")


def _raw_outputs(response: Any) -> dict[str, bytes]:
    """{output name: raw contents} of a ModelInferResponse protobuf."""
    return {output.name: raw for output, raw in zip(response.outputs, response.raw_output_contents)}


def parse_response(response: Any) -> UpstreamDelta:
    """A ModelInferResponse protobuf -> UpstreamDelta (raw contents, no numpy for text)."""
    values = _raw_outputs(response)
    final = response.parameters.get("triton_final_response")

    def integer(name: str) -> int | None:
        raw = values.get(name)
        return struct.unpack_from("<i", raw, 0)[0] if raw and len(raw) >= 4 else None

    ids = values.get("output_ids")
    log_probs = values.get("output_log_probs")
    return UpstreamDelta(
        text=_bytes_element(values["text_output"]) if "text_output" in values else "",
        num_output_tokens=integer("num_output_tokens"),
        num_input_tokens=integer("num_input_tokens"),
        token_ids=np.frombuffer(ids, dtype=np.int32).tolist() if ids is not None else None,
        log_probs=np.frombuffer(log_probs, dtype=np.float32).tolist() if log_probs is not None else None,
        final=bool(final.bool_param) if final is not None else False,
    )


def parse_token_response(response: Any, detokenizer: IncrementalDetokenizer, before: int) -> UpstreamDelta:
    """A ModelInferResponse of `ensemble_tokens` -> UpstreamDelta, its text made here.

    `before`: tokens of this generation in earlier responses. The ids are output_ids[:sequence_length]
    (beam 0); the final response also flushes what the detokenizer held back."""
    values = _raw_outputs(response)
    final_param = response.parameters.get("triton_final_response")
    final = bool(final_param.bool_param) if final_param is not None else False
    ids = token_ids(values)
    text = detokenizer.add_all(ids) if final else detokenizer.add_many(ids)
    log_probs = values.get("output_log_probs")
    return UpstreamDelta(
        text=text, num_output_tokens=before + len(ids), num_input_tokens=None, token_ids=ids,
        log_probs=np.frombuffer(log_probs, dtype=np.float32)[:len(ids)].tolist()
        if log_probs is not None else None,
        final=final)


def classify(message: str) -> UpstreamError:
    """An error Triton sent for a request -> what the client is told."""
    lower = message.lower()
    if "unavailable" in lower or "failed to connect" in lower or "socket closed" in lower or \
            "connection refused" in lower:
        return UpstreamError("unavailable", message)
    if "is not ready" in lower or "unknown model" in lower or "not found" in lower and "model" in lower:
        return UpstreamError("not_ready", message)
    # nemo-trt's Python models prefix failures that are theirs (not the request's)
    if "failed: " in lower and any(p in lower for p in ("preprocessing failed", "generate failed",
                                                         "postprocessing failed", "traceback")):
        return UpstreamError("failed", message)
    return UpstreamError("rejected", message)


class _Stream:
    """One persistent ModelStreamInfer call that carries one request at a time.

    Opening a bidirectional stream per request costs the server about a millisecond of CPU
    and the client half of that (measured: bench/results/openai_gateway.md); a stream kept
    open and reused does not. A request that must stop early (client gone, stop string,
    thinking budget) cancels its stream, which is then thrown away: Triton cancels the
    requests of a stream only by cancelling the stream.

    Requests are written by the generation's own task (`call.write`), not fed through a
    request iterator: that would hand each one to grpc's consumer task, a loop turn later.
    """

    def __init__(self, stub: Any):
        self.call = stub.ModelStreamInfer()
        self.used = False

    async def send(self, request: Any) -> None:
        """Writes the request (grpc starts the write at once; this waits for it to be taken)."""
        await self.call.write(request)

    async def receive(self) -> Any:
        """The next ModelStreamInferResponse; StopAsyncIteration when the stream ended."""
        import grpc

        response = await self.call.read()
        if response is grpc.aio.EOF:
            raise StopAsyncIteration
        return response

    def cancel(self) -> None:
        self.call.cancel()


async def _send(stream: _Stream, body: Any) -> None:
    import grpc

    try:
        await stream.send(body)
    except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
        pass  # the stream is broken: reading it reports why (and a used one is replaced)


class TritonUpstream:
    """gRPC channel(s) to one Triton server and a pool of open streams; create inside the
    running event loop."""

    MAX_IDLE_STREAMS = 256

    def __init__(self, url: str, model: str = ENSEMBLE, channels: int = 1):
        import grpc
        import tritonclient.grpc.aio as grpcaio
        from tritonclient.grpc import service_pb2_grpc

        self.url = url
        self.model = model
        self._next = 0
        # grpc's reconnect backoff grows to 2 minutes: a Triton that restarted would stay "down"
        # to the gateway that long. Triton is a local dependency; retry every 2 s at most.
        options = [("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1),
                   ("grpc.max_reconnect_backoff_ms", 2000)]
        self._clients = [grpcaio.InferenceServerClient(url, channel_args=options) for _ in range(max(1, channels))]
        # Generations go through Triton's gRPC service itself (tritonclient's own protobuf
        # module): requests are built as protobufs and responses read as they come, with no
        # InferInput/InferResult layer per request and per token.
        self._channels = [grpc.aio.insecure_channel(url, options=options) for _ in range(max(1, channels))]
        self._stubs = [service_pb2_grpc.GRPCInferenceServiceStub(c) for c in self._channels]
        self._next_stub = 0
        self._idle: list[_Stream] = []
        self.outputs: frozenset[str] = frozenset()  # the ensemble's outputs, once known
        # Set by load_deployment when the gateway makes the text itself (ensemble_tokens).
        self.tokenizer: Tokenizer | None = None
        self.token_model: str | None = None

    def _client(self):  # noqa: ANN202 - tritonclient has no type hints
        self._next = (self._next + 1) % len(self._clients)
        return self._clients[self._next]

    def _acquire(self, fresh: bool = False) -> _Stream:
        if self._idle and not fresh:
            return self._idle.pop()
        self._next_stub = (self._next_stub + 1) % len(self._stubs)
        return _Stream(self._stubs[self._next_stub])

    def _release(self, stream: _Stream) -> None:
        if len(self._idle) < self.MAX_IDLE_STREAMS:
            stream.used = True
            self._idle.append(stream)
        else:
            stream.cancel()  # idle: nothing of it is running in Triton

    async def close(self) -> None:
        for stream in self._idle:
            stream.cancel()
        self._idle.clear()
        for client in self._clients:
            await client.close()
        for channel in self._channels:
            await channel.close()

    # -- health and metadata --------------------------------------------------
    async def ready(self, timeout: float = 2.0) -> bool:
        client = self._clients[0]
        try:
            return bool(await client.is_server_ready(client_timeout=timeout)) and \
                bool(await client.is_model_ready(self.token_model or self.model, client_timeout=timeout))
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False

    async def live(self, timeout: float = 2.0) -> bool:
        try:
            return bool(await self._clients[0].is_server_live(client_timeout=timeout))
        except Exception:  # noqa: BLE001
            return False

    async def prompt_tokens(self, request: UpstreamRequest, timeout: float = 30.0) -> int | None:
        """The prompt length preprocessing renders for `request` (one unary call)."""
        body = infer_request(PREPROCESSING, request.preprocessing_tensors(), ["REQUEST_INPUT_LEN"])
        try:
            response = await self._stubs[0].ModelInfer(body, timeout=timeout)
            return int(struct.unpack_from("<i", response.raw_output_contents[0])[0])
        except Exception:  # noqa: BLE001 - usage then lacks the prompt length, the answer stands
            return None

    async def model_config(self, name: str, timeout: float = 5.0) -> dict[str, Any]:
        response = await self._clients[0].get_model_config(name, as_json=True, client_timeout=timeout)
        return response.get("config", response)

    # -- generation -----------------------------------------------------------
    async def generate(self, request: UpstreamRequest,
                       timeout: float | None = None) -> AsyncGenerator[UpstreamDelta, None]:
        """Deltas of one generation; leaving the loop early cancels it inside Triton."""
        import grpc

        detokenizer = None
        if self.token_model is not None and self.tokenizer is not None:
            detokenizer = IncrementalDetokenizer(self.tokenizer)
            body = request.infer_request(self.token_model, request.token_outputs())
        else:
            body = request.infer_request(self.model, request.outputs(self.outputs))
        tokens = 0
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        stream = self._acquire()
        received = False
        finished = False
        try:
            await _send(stream, body)
            while True:
                try:
                    if deadline is None:
                        response = await stream.receive()
                    else:
                        left = deadline - asyncio.get_running_loop().time()
                        response = await asyncio.wait_for(stream.receive(), max(left, 0.001))
                except asyncio.TimeoutError:
                    raise UpstreamError("failed", f"no answer from Triton within {timeout} s") from None
                except (StopAsyncIteration, grpc.aio.AioRpcError) as exc:
                    if not received and stream.used:
                        # a stream that broke while idle (Triton restarted): once more on a new one
                        stream.cancel()
                        stream = self._acquire(fresh=True)
                        await _send(stream, body)
                        continue
                    finished = True
                    if isinstance(exc, StopAsyncIteration):
                        raise UpstreamError("unavailable", f"Triton at {self.url} closed the stream") from None
                    code = exc.code()
                    if code == grpc.StatusCode.UNAVAILABLE:
                        raise UpstreamError("unavailable", f"Triton at {self.url} is unavailable: "
                                                           f"{exc.details()}") from None
                    if code == grpc.StatusCode.CANCELLED:
                        return
                    raise classify(f"{code.name}: {exc.details()}") from None
                received = True
                if response.error_message:
                    # the stream is not reused after an error: nothing of it may reach the next request
                    raise classify(response.error_message)
                if detokenizer is None:
                    delta = parse_response(response.infer_response)
                else:
                    delta = parse_token_response(response.infer_response, detokenizer, tokens)
                    tokens = delta.num_output_tokens or 0
                if delta.final:
                    finished = True
                    self._release(stream)
                yield delta
                if delta.final:
                    return
        finally:
            if not finished:
                stream.cancel()


@dataclass(frozen=True)
class Deployment:
    """What the gateway learns about the model repository through Triton's config API."""

    max_input_len: int | None = None
    max_seq_len: int | None = None
    default_max_tokens: int | None = None
    default_reasoning: str | None = None
    serving_model: str | None = None
    inputs: frozenset[str] = frozenset()
    outputs: frozenset[str] = frozenset()
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def supports_tools(self) -> bool:
        return "tools" in self.inputs and "continue_final" in self.inputs

    @property
    def supports_logprobs(self) -> bool:
        return "output_log_probs" in self.outputs and "return_log_probs" in self.inputs

    @property
    def fingerprint(self) -> str | None:
        engine = self.identity.get("engine_id")
        return f"nemo-trt-{engine}" if engine else None

    def completion_cap(self, prompt_tokens: int | None, requested: int | None) -> int | None:
        """The most tokens this request may generate (what preprocessing allows)."""
        if requested is not None:
            return requested
        if self.default_max_tokens is None or self.max_seq_len is None or prompt_tokens is None:
            return None
        return min(self.default_max_tokens, self.max_seq_len - prompt_tokens)


def _params(config: dict[str, Any]) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}


def deployment_from_configs(ensemble: dict[str, Any], preprocessing: dict[str, Any] | None) -> Deployment:
    params = _params(preprocessing or {})

    def number(name: str) -> int | None:
        try:
            return int(params[name])
        except (KeyError, ValueError):
            return None

    identity: dict[str, Any] = {}
    raw = _params(ensemble).get("nemo_trt_repository")
    if raw:
        try:
            identity = json.loads(raw)
        except ValueError:
            identity = {}
    return Deployment(
        max_input_len=number("max_input_len"),
        max_seq_len=number("max_seq_len"),
        default_max_tokens=number("default_max_tokens"),
        default_reasoning=params.get("default_reasoning") or None,
        serving_model=params.get("serving_model") or None,
        inputs=frozenset(i["name"] for i in ensemble.get("input", [])),
        outputs=frozenset(o["name"] for o in ensemble.get("output", [])),
        identity=identity,
    )


async def load_deployment(upstream: TritonUpstream, tokenizer: Tokenizer | None = None,
                          tokenizer_sha256: str | None = None) -> Deployment:
    """The deployment's facts; with `tokenizer` (and its files' digest, `tokenizer_sha256` of
    the repository identity) the upstream is switched to `ensemble_tokens` where the repository
    has it and it is the served tokenizer."""
    ensemble = await upstream.model_config(upstream.model)
    try:
        preprocessing: dict[str, Any] | None = await upstream.model_config(PREPROCESSING)
    except Exception:  # noqa: BLE001 - another ensemble layout: limits stay unknown
        preprocessing = None
    deployment = deployment_from_configs(ensemble, preprocessing)
    upstream.outputs = deployment.outputs
    if tokenizer is not None and upstream.model == ENSEMBLE:
        await _use_token_model(upstream, deployment, tokenizer, tokenizer_sha256)
    return deployment


async def _use_token_model(upstream: TritonUpstream, deployment: Deployment, tokenizer: Tokenizer,
                           tokenizer_sha256: str | None) -> None:
    served = deployment.identity.get("tokenizer_sha256")
    if served is None or served != tokenizer_sha256:
        log.warning("the gateway's tokenizer is not the one the repository serves (tokenizer_sha256 %s, served "
                    "%s): reading text_output from `%s`", tokenizer_sha256, served, upstream.model)
        return
    try:
        config = await upstream.model_config(TOKEN_ENSEMBLE)
    except Exception:  # noqa: BLE001 - a repository written before ensemble_tokens existed
        log.info("no `%s` model on Triton: reading text_output from `%s`", TOKEN_ENSEMBLE, upstream.model)
        return
    if not set(TOKEN_OUTPUTS) <= {o["name"] for o in config.get("output", [])}:
        log.warning("`%s` lacks %s: reading text_output from `%s`", TOKEN_ENSEMBLE, TOKEN_OUTPUTS, upstream.model)
        return
    upstream.tokenizer, upstream.token_model = tokenizer, TOKEN_ENSEMBLE
    log.info("generating through `%s`: token ids from Triton, text made in the gateway", TOKEN_ENSEMBLE)
