"""Run the gateway on uvicorn: in the foreground (CLI) or on a thread (serve, tests, bench).

The listening socket is bound before uvicorn starts, so port 0 picks a free port that is
known at once. uvloop and httptools are used where installed (they are dependencies): the
gateway's own cost per streamed token is mostly the event loop and the HTTP writer, whose
writes of one loop turn leave together (coalesce.py).
"""
from __future__ import annotations

import importlib.util
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from nemo_trt.errors import NemoTrtError
from nemo_trt.serve.openai.serving import GatewayConfig


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise NemoTrtError(f"cannot listen on {host}:{port} for the OpenAI API: {exc.strerror}",
                           "pick another --openai-port/--port (0 = any free port) or stop what uses it") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _uvicorn_config(config: GatewayConfig, log_level: str, access_log: bool, upstream_factory=None):  # noqa: ANN001, ANN202
    import uvicorn

    from nemo_trt.serve.openai.app import create_app
    from nemo_trt.serve.openai.coalesce import coalescing_protocol

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    if importlib.util.find_spec("httptools"):
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as http
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol as http  # type: ignore[assignment]
    # X-Forwarded-* only change the client address the access log shows: without that log, not
    # parsing them saves a middleware on every request
    return uvicorn.Config(create_app(config, upstream_factory), loop=loop, http=coalescing_protocol(http),
                          log_level=log_level, access_log=access_log, proxy_headers=access_log,
                          timeout_graceful_shutdown=5, lifespan="on")


def url_of(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    return f"http://{shown}:{port}"


@dataclass
class GatewayThread:
    """The gateway on a background thread with its own event loop (started/stopped by the caller)."""

    config: GatewayConfig
    host: str = "127.0.0.1"
    port: int = 0
    log_level: str = "warning"
    access_log: bool = False
    upstream_factory: Any = None  # tests: a stand-in for Triton

    def __post_init__(self) -> None:
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return url_of(self.host, self.port)

    def start(self, timeout: float = 30.0) -> GatewayThread:
        import uvicorn

        sock = bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(_uvicorn_config(self.config, self.log_level, self.access_log,
                                                      self.upstream_factory))
        server = self._server
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="nemo-trt-openai",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise NemoTrtError(f"the OpenAI gateway did not start on {self.url}",
                                   "see the log above; check that Triton's address is right")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = None
        self._thread = None

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_foreground(config: GatewayConfig, host: str, port: int, log_level: str = "info",
                   access_log: bool = False, on_ready=None) -> None:  # noqa: ANN001
    """Serve until SIGINT/SIGTERM (uvicorn's own handlers; in-flight streams get 5 s)."""
    import uvicorn

    sock = bind(host, port)
    server = uvicorn.Server(_uvicorn_config(config, log_level, access_log))
    if on_ready is not None:
        bound = sock.getsockname()[1]
        original = server.startup

        async def startup(sockets=None):  # noqa: ANN001, ANN202
            await original(sockets=sockets)
            on_ready(url_of(host, bound))

        server.startup = startup  # type: ignore[method-assign]

    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal for the
    # previous handler: make both a KeyboardInterrupt, so that a stop is a clean exit (0).
    def interrupt(signum, frame):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
