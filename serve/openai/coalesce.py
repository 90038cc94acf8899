"""One socket write per event-loop turn for uvicorn's HTTP protocol.

uvicorn writes the status line and headers as soon as the app sends `http.response.start`,
then the body in a write of its own: a JSON answer costs two `send` syscalls and wakes the
client twice. Here the protocol's transport holds the writes of one loop turn and hands
them to the real transport together at the end of it (`call_soon`), so a whole answer —
or an SSE event with the response head before it — leaves in one write. Nothing waits
longer than the current turn: streamed tokens go out as soon as before, and a response's
last write leaves at once (uvicorn's `on_response_complete`), not at the end of the turn.
"""
from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport:
    """Wraps an asyncio transport: `write` buffers until the end of the loop turn; everything
    else (close, flow control, extra info) flushes first where order matters, then delegates."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def coalescing_protocol(base: type) -> type:
    """A subclass of uvicorn's HTTP protocol class `base` whose transport coalesces writes."""

    class Coalescing(base):
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(CoalescingTransport(transport, asyncio.get_running_loop()))

        def on_response_complete(self) -> None:
            # the answer is whole: out now, ahead of whatever else this loop turn has queued
            self.transport.flush()
            super().on_response_complete()

    Coalescing.__name__ = f"Coalescing{base.__name__}"
    return Coalescing
