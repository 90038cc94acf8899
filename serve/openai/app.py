"""The gateway's ASGI app: routes, auth, body limit, error handlers, lifespan.

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models,
GET /v1/health/live, GET /v1/health/ready (200 only when Triton and its ensemble are
ready), GET /metrics (and /v1/metrics, NIM's path). Every error is an OpenAI error body.

    ArrivalStamp → BodyLimit → AuthGate → GenerationRoutes ─(the two POSTs)─▶ chat / completions
                                                     └─(everything else)─▶ FastAPI
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
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
from nemo_trt.serve.openai.serving import ClientGone, GatewayConfig, GatewayState, log
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


def create_app(config: GatewayConfig, upstream_factory: Callable[[], TritonUpstream] | None = None) -> ASGIApp:
    """The gateway's ASGI app: FastAPI behind the generation routes and the auth, body-limit and
    arrival-stamp layers. `upstream_factory` (tests): builds the upstream inside the server's
    event loop."""
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

    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return error_response(metrics, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(metrics, from_validation(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = f"{request.method} {request.url.path}: {exc.detail}"
        error = OpenAIError(exc.status_code, message, kind)
        return JSONResponse(error.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return unexpected_response(metrics, request.url.path, exc)

    # Requests to these two reach GenerationRoutes below, not FastAPI: declared here for the
    # OpenAPI schema (/docs), with the same handlers.
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

    routes = GenerationRoutes(app, metrics, {"/v1/chat/completions": (ChatCompletionRequest, chat.create),
                                             "/v1/completions": (CompletionRequest, completions.create)})
    # pure ASGI middlewares (no response wrapping: streams and disconnects pass untouched)
    return ArrivalStamp(BodyLimit(AuthGate(routes, state), config.max_body_bytes))


def error_response(metrics: GatewayMetrics, error: OpenAIError) -> JSONResponse:
    metrics.failed(error.status)
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def unexpected_response(metrics: GatewayMetrics, path: str, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s", path, exc_info=exc)
    return error_response(metrics, OpenAIError(500, f"internal error: {type(exc).__name__}: {exc}",
                                               "server_error"))


Handler = Callable[[Any, Request, float], Awaitable[Response]]


class GenerationRoutes:
    """POST /v1/chat/completions and /v1/completions, ahead of FastAPI; every other request
    goes on to FastAPI.

    These two carry every generation. FastAPI's way to a handler (its error, body-limit,
    telemetry and exit-stack middlewares, routing, dependency solving) costs about 0.1 ms of
    CPU per request, on the path between the client and Triton (bench/results/openai_gateway.md);
    here the body is validated by pydantic straight from its JSON bytes and the same handler
    is called. Errors are answered as FastAPI's handlers answer them (OpenAI error bodies).
    """

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics, routes: dict[str, tuple[type[BaseModel], Handler]]):
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        model, handler = route
        request = Request(scope, receive)
        try:
            body = model.model_validate_json(await request.body())
            response = await handler(body, request, _arrival(request))
        except ClientGone:
            return  # a client that hangs up is not an error of the server's
        except OpenAIError as exc:
            response = error_response(self.metrics, exc)
        except ValidationError as exc:
            response = error_response(self.metrics, from_validation(list(exc.errors())))  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - a bug: a 500 with what went wrong, logged
            response = unexpected_response(self.metrics, scope["path"], exc)
        await response(scope, receive, send)


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
