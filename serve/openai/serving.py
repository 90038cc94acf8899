"""What chat and completions share: the gateway's state, request checks, admission, SSE.

`GatewayState` holds the upstream client, what was learnt about the deployment, the
tokenizer (optional), metrics, the API key and the in-flight count. Checks here turn
requests this deployment cannot honour into 400s naming the field, before anything is
sent to Triton.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from tokenizers import Tokenizer

from nemo_trt.model_facts import DEFAULT_MODEL, ServingFacts, load_serving_facts
from nemo_trt.serve.openai.auth import ApiKeyAuth
from nemo_trt.serve.openai.errors import (
    OpenAIError,
    bad_request,
    internal,
    model_not_found,
    too_many_requests,
    unavailable,
    unsupported,
)
from nemo_trt.serve.openai.generation import Event, Generation
from nemo_trt.serve.openai.metrics import GatewayMetrics
from nemo_trt.serve.openai.prompt_length import PromptCounter
from nemo_trt.serve.openai.protocol import SamplingFields
from nemo_trt.serve.openai.upstream import Deployment, TritonUpstream, UpstreamError, UpstreamRequest, load_deployment

log = logging.getLogger("nemo_trt.openai")
T = TypeVar("T")
SEED_MAX = 2**64 - 1


@dataclass
class GatewayConfig:
    triton_url: str
    model: str = "ensemble"  # the Triton model the gateway calls
    served_model_name: str | None = None  # the id clients use (default: the serving model's name)
    api_key: str | None = None
    max_inflight: int = 0  # 0: no limit
    max_body_bytes: int = 16 * 1024 * 1024
    tokenizer_dir: Path | None = None
    detokenize: bool = True  # make text from ids here (ensemble_tokens) when the served tokenizer is at hand
    request_timeout: float | None = None  # seconds one upstream generation may take
    channels: int = 1


@dataclass
class GatewayState:
    config: GatewayConfig
    metrics: GatewayMetrics
    auth: ApiKeyAuth
    tokenizer: Tokenizer | None = None
    upstream: TritonUpstream | None = None
    deployment: Deployment | None = None
    prompt_counter: PromptCounter | None = None  # prompt lengths counted here (prompt_length.py)
    tokenizer_sha256: str | None = None  # the tokenizer files' digest, as the repository identity has it
    inflight: int = 0
    started: float = field(default_factory=time.time)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def served_name(self) -> str:
        return self.config.served_model_name or (self.deployment.serving_model if self.deployment else None) \
            or DEFAULT_MODEL

    @property
    def facts(self) -> ServingFacts:
        name = self.deployment.serving_model if self.deployment and self.deployment.serving_model else DEFAULT_MODEL
        return load_serving_facts(name)

    def aliases(self) -> set[str]:
        facts = self.facts
        names = {self.served_name, facts.name, facts.hf_id, *facts.aliases}
        return {n.lower() for n in names}

    async def ensure_deployment(self) -> Deployment:
        """The deployment's facts, loaded once Triton answers (the gateway may start first)."""
        if self.deployment is not None:
            return self.deployment
        assert self.upstream is not None
        async with self._lock:
            if self.deployment is None:
                tokenizer = self.tokenizer if self.config.detokenize else None
                try:
                    deployment = await load_deployment(self.upstream, tokenizer, self.tokenizer_sha256)
                except Exception as exc:  # noqa: BLE001 - Triton down or the model not loaded yet
                    raise unavailable(f"Triton at {self.config.triton_url} is not ready to serve "
                                      f"`{self.config.model}`: {str(exc).splitlines()[0][:300]}") from None
                self.deployment = deployment
                self.prompt_counter = PromptCounter.for_deployment(self.tokenizer, self.facts, deployment)
        return self.deployment

    # -- admission ------------------------------------------------------------
    def admit(self) -> None:
        limit = self.config.max_inflight
        if limit and self.inflight >= limit:
            raise too_many_requests(limit)
        self.inflight += 1

    def release(self) -> None:
        self.inflight -= 1

    def check_model(self, model: str | None) -> str:
        if model is None or model.lower() in self.aliases():
            return self.served_name
        raise model_not_found(model, self.served_name)


def upstream_error(exc: UpstreamError, triton_url: str) -> OpenAIError:
    """What Triton said about a request -> the client's status code."""
    message = exc.message
    if exc.kind == "unavailable":
        return unavailable(f"Triton at {triton_url} is unavailable; retry when it is back ({message[:200]})")
    if exc.kind == "not_ready":
        return unavailable(f"the model is not ready on Triton at {triton_url} ({message[:200]})")
    if exc.kind == "failed":
        return internal(f"generation failed inside Triton: {message[:500]}")
    lower = message.lower()
    if "max input length" in lower or "max_seq_len" in lower or "no room to generate" in lower:
        param = "max_tokens" if "max_tokens" in lower else "messages"
        return OpenAIError(400, message, "invalid_request_error", param, "context_length_exceeded")
    return bad_request(message)


def sampling_into(request: SamplingFields, upstream: UpstreamRequest, deployment: Deployment,
                  max_tokens: int | None) -> None:
    """Checks shared by chat and completions; fills the upstream request's sampling fields."""
    if request.n != 1:
        raise unsupported("n", f"n={request.n} is not supported: this deployment returns one choice per request")
    if request.logit_bias:
        raise unsupported("logit_bias", "logit_bias is not supported by this deployment")
    if request.stream_options is not None and not request.stream:
        raise bad_request("stream_options is only allowed with stream: true", "stream_options")
    if request.seed is not None and not (0 <= request.seed <= SEED_MAX):
        raise bad_request(f"seed must be between 0 and {SEED_MAX}, got {request.seed}", "seed")
    if max_tokens is not None and deployment.max_seq_len is not None and max_tokens >= deployment.max_seq_len:
        raise OpenAIError(400, f"max_tokens {max_tokens} does not fit this engine's max_seq_len of "
                          f"{deployment.max_seq_len} (prompt + output): ask for fewer tokens",
                          "invalid_request_error", "max_tokens", "context_length_exceeded")
    nvext = request.nvext
    upstream.temperature = request.temperature
    upstream.top_p = request.top_p
    upstream.top_k = request.top_k if request.top_k is not None else (nvext.top_k if nvext else None)
    upstream.seed = request.seed
    upstream.presence_penalty = request.presence_penalty or None
    upstream.frequency_penalty = request.frequency_penalty or None
    repetition = request.repetition_penalty if request.repetition_penalty is not None else \
        (nvext.repetition_penalty if nvext else None)
    upstream.repetition_penalty = None if repetition in (None, 1.0) else repetition
    min_tokens = request.min_tokens if request.min_tokens is not None else (nvext.min_tokens if nvext else None)
    upstream.min_tokens = min_tokens or None
    upstream.max_tokens = max_tokens
    upstream.stop_words = [s for s in request.stop_list() if s]


class ClientGone(Exception):
    """The client closed its connection before its answer: there is no one to answer."""


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work` in this task; if the client goes away first, cancel it (which cancels it in
    Triton) and raise ClientGone. Only the watcher is a task of its own: the work's answer
    needs no extra loop turn."""
    task = asyncio.current_task()
    assert task is not None
    state = {"done": False, "gone": False}

    async def disconnected() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                if not state["done"]:
                    state["gone"] = True
                    task.cancel()
                return

    watcher = asyncio.ensure_future(disconnected())
    try:
        result = await work
        state["done"] = True
        return result
    except asyncio.CancelledError:
        if state["gone"]:
            uncancel = getattr(task, "uncancel", None)  # Python 3.11+: the cancel was ours, not the server's
            if uncancel is not None:
                uncancel()
            raise ClientGone() from None
        raise
    finally:
        state["done"] = True
        watcher.cancel()


async def prime(events: AsyncGenerator[Event, None], state: GatewayState) -> Event:
    """The first event: the request reached the model (errors before it are real HTTP errors)."""
    try:
        return await events.__anext__()
    except UpstreamError as exc:
        raise upstream_error(exc, state.config.triton_url) from None
    except StopAsyncIteration:
        return Event()


async def respond(state: GatewayState, raw: Request, generation: Generation, stream: bool,
                  whole: Callable[[], Awaitable[dict[str, Any]]],
                  chunks: Callable[[], tuple[Callable[[Event], list[str]], Callable[[], list[str]]]]) -> Response:
    """The HTTP answer of an admitted request: the JSON body (the generation cancelled if the
    client leaves first), or an SSE stream once the first upstream answer is in (so errors
    before it are real statuses). Slots, gauges and histograms are released exactly once."""
    if not stream:
        try:
            body = await until_disconnect(raw, whole())
        except (ClientGone, asyncio.CancelledError):
            state.metrics.finished("abort")
            generation.close(None)
            raise
        except BaseException:
            generation.close(None)
            raise
        finally:
            state.release()
        # gauges and histograms once the answer has left (it leaves as soon as it is whole,
        # coalesce.py): not between Triton's answer and the client
        asyncio.get_running_loop().call_soon(generation.close, generation.outcome.finish_reason)
        return JSONResponse(body)
    events = generation.events()
    try:
        first = await prime(events, state)
    except BaseException:
        generation.close(None)
        await events.aclose()
        state.release()
        raise
    render, finish = chunks()
    return StreamingResponse(stream_body(state, generation, first, events, render, finish),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


DONE = "data: [DONE]\n\n"


async def stream_body(state: GatewayState, generation: Generation, first: Event,
                      events: AsyncGenerator[Event, None], render: Callable[[Event], list[str]],
                      finish: Callable[[], list[str]]) -> AsyncIterator[str]:
    """SSE body: chunks of the primed first event and the rest; in-band error if Triton fails
    mid-stream; the upstream call is cancelled if the client disconnects (Starlette cancels
    this generator at its current await)."""
    reason: str | None = None
    try:
        # one write per event: the chunks an event makes (role + text, a tool call and its
        # argument fragments) go out together
        chunks = render(first)
        if chunks:
            yield "".join(chunks)
        try:
            async for event in events:
                chunks = render(event)
                if chunks:
                    yield chunks[0] if len(chunks) == 1 else "".join(chunks)
        except UpstreamError as exc:
            error = upstream_error(exc, state.config.triton_url)
            state.metrics.failed(error.status)
            yield sse(error.body()) + DONE
            return
        reason = generation.outcome.finish_reason
        yield "".join(finish()) + DONE
    finally:
        if reason is None and not generation.done:
            state.metrics.finished("abort")
        generation.close(reason)
        await events.aclose()
        state.release()
