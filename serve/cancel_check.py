"""Asking "has the client cancelled?" at most every so often.

In the Python backend, `response_sender.is_cancelled()` is a round trip to the server
process (python_backend src/pb_cancel.cc: the stub enqueues the query for its
stub-to-parent thread and waits for the answer). Asked on every token of a stream it
costs about a fifth of the per-token time of `generate` on a loaded 2-core machine
(bench/results/serving_overhead.md). `CancelCheck` asks at most once every `interval_s`
(and not before `interval_s` has passed since the request began), and remembers a yes:
a cancelled stream still stops within `interval_s` plus one token.
"""
from __future__ import annotations

import time
from collections.abc import Callable

DEFAULT_INTERVAL_S = 0.01


class CancelCheck:
    def __init__(self, is_cancelled: Callable[[], bool], interval_s: float = DEFAULT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self._is_cancelled = is_cancelled
        self._interval = interval_s
        self._clock = clock
        self._next = clock() + interval_s
        self.cancelled = False

    def __call__(self) -> bool:
        if self.cancelled:
            return True
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self._interval
        self.cancelled = bool(self._is_cancelled())
        return self.cancelled
