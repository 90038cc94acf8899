"""The FastAPI application: routes, auth, body limit, error handlers, lifespan.

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models,
GET /v1/health/live, GET /v1/health/ready (200 only when Triton and its ensemble are
ready), GET /metrics (and /v1/metrics, NIM's path). Every error is an OpenAI error body.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tokenizers import Tokenizer

from nemo_trt import __version__
from nemo_trt.model_facts import DEFAULT_MODEL
from nemo_trt.serve.openai.auth import ApiKeyAuth
from nemo_trt.serve.openai.chat import ChatService
from nemo_trt.serve.openai.completions import CompletionService
from nemo_trt.serve.openai.errors import OpenAIError, from_validation, unauthorized, unavailable
from nemo_trt.serve.openai.metrics import CONTENT_TYPE, GatewayMetrics
from nemo_trt.serve.openai.protocol import ChatCompletionRequest, CompletionRequest
from nemo_trt.serve.openai.serving import GatewayConfig, GatewayState, log
from nemo_trt.serve.openai.upstream import TritonUpstream
from nemo_trt.serve.repo_identity import digest, tokenizer_file_hashes

OPEN_PATHS = frozenset({"/v1/health/live", "/v1/health/ready", "/metrics", "/v1/metrics", "/health"})


class BodyLimit:
    """413 for request bodies over the limit (Content-Length, or counted as they stream in)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.limit:
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._reject(send)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        error = OpenAIError(413, f"The request body is larger than {self.limit} bytes", "invalid_request_error",
                            None, "request_too_large")
        response = JSONResponse(error.body(), status_code=413)
        await response({"type": "http"}, _no_receive, send)


class _TooLarge(Exception):
    pass


class AuthGate:
    """401 for /v1 requests without the bearer key (health probes and metrics stay open)."""

    def __init__(self, app: ASGIApp, state: GatewayState):
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        auth = self.state.auth
        if scope["type"] == "http" and auth.enabled:
            path = scope.get("path", "")
            if path.startswith("/v1/") and path not in OPEN_PATHS:
                header = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"authorization"),
                              None)
                if not auth.allows(header):
                    error = unauthorized()
                    self.state.metrics.failed(401)
                    response = JSONResponse(error.body(), status_code=401, headers=error.headers)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


async def _no_receive() -> Message:  # pragma: no cover - JSONResponse never reads
    return {"type": "http.disconnect"}


@lru_cache(maxsize=4)
def load_tokenizer(directory: str) -> Tokenizer:
    """The served tokenizer (read-only here: decoding and counting; cached per path)."""
    return Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))


def create_app(config: GatewayConfig, upstream_factory: Callable[[], TritonUpstream] | None = None) -> FastAPI:
    """`upstream_factory` (tests): builds the upstream inside the server's event loop."""
    metrics = GatewayMetrics(config.served_model_name or DEFAULT_MODEL, config.max_inflight)
    tokenizer = load_tokenizer(str(config.tokenizer_dir)) if config.tokenizer_dir is not None else None
    state = GatewayState(config=config, metrics=metrics, auth=ApiKeyAuth.from_env(config.api_key),
                         tokenizer=tokenizer,
                         tokenizer_sha256=digest(tokenizer_file_hashes(config.tokenizer_dir))
                         if config.tokenizer_dir is not None else None)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.upstream = upstream_factory() if upstream_factory is not None else \
            TritonUpstream(config.triton_url, config.model, config.channels)
        try:
            await state.ensure_deployment()
        except OpenAIError as exc:
            log.warning("Triton not ready yet (%s); the gateway will retry on the next request", exc.message)
        try:
            yield
        finally:
            await state.upstream.close()

    app = FastAPI(title="nemo-trt OpenAI-compatible API", version=__version__, lifespan=lifespan,
                  docs_url="/docs", redoc_url=None)
    app.state.gateway = state
    chat = ChatService(state)
    completions = CompletionService(state)

    # pure ASGI middlewares (no response wrapping: streams and disconnects pass untouched);
    # the last added runs first
    app.add_middleware(AuthGate, state=state)
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(ArrivalStamp)

    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        metrics.failed(exc.status)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = from_validation(list(exc.errors()))
        metrics.failed(error.status)
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = f"{request.method} {request.url.path}: {exc.detail}"
        error = OpenAIError(exc.status_code, message, kind)
        return JSONResponse(error.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        metrics.failed(500)
        error = OpenAIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")
        return JSONResponse(error.body(), status_code=500)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request):  # noqa: ANN202
        return await chat.create(body, request, _arrival(request))

    @app.post("/v1/completions", response_model=None)
    async def text_completions(body: CompletionRequest, request: Request):  # noqa: ANN202
        return await completions.create(body, request, _arrival(request))

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        deployment = await state.ensure_deployment()
        facts = state.facts
        return {"object": "list", "data": [{
            "id": state.served_name, "object": "model", "created": int(state.started), "owned_by": "nemo-trt",
            "root": facts.hf_id, "parent": None, "max_model_len": deployment.max_seq_len}]}

    @app.get("/v1/health/live")
    async def live() -> dict[str, Any]:
        return {"object": "health.response", "message": "Service is live.", "status": "live"}

    @app.get("/v1/health/ready")
    async def ready() -> JSONResponse:
        assert state.upstream is not None
        if await state.upstream.ready():
            try:
                await state.ensure_deployment()
            except OpenAIError:
                pass
            else:
                return JSONResponse({"object": "health.response", "message": "Service is ready.",
                                     "status": "ready"})
        error = unavailable(f"Triton at {config.triton_url} or its `{config.model}` model is not ready")
        return JSONResponse(error.body(), status_code=503, headers=error.headers)

    @app.get("/metrics", include_in_schema=False)
    @app.get("/v1/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


def _arrival(request: Request) -> float:
    stamp = request.scope.get("nemo_trt_arrival")
    return stamp if isinstance(stamp, float) else time.perf_counter()


class ArrivalStamp:
    """Stamps each request's arrival before routing and body parsing (the TTFT clock)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["nemo_trt_arrival"] = time.perf_counter()
        await self.app(scope, receive, send)
