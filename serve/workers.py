"""Reusable daemon threads for Python-backend models that answer requests off `execute()`.

A decoupled Python model that serves each request on a thread of its own must return from
`execute()` at once (a stream may last thousands of tokens); the test stand-in for
`tensorrt_llm` does so in its thread-per-request mode. Starting a fresh thread
per request puts `Thread.start()` on every request's path: it waits until the new thread
has been scheduled, which on a busy machine is a context switch the request pays for.
`Workers` keeps finished threads waiting for the next job instead, so `submit` only puts
the job on a queue; when no thread is idle it starts one, so jobs never wait for each other
(unbounded concurrency, like one thread per request). Threads are daemons: a stub shutting
down with a request still in flight is not held up by it.
"""
from __future__ import annotations

import queue
import threading
import traceback
from collections.abc import Callable
from typing import Any


class Workers:
    def __init__(self, name: str = "worker"):
        self._name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads that will take a job without one being started for it
        self.started = 0  # threads started so far (the peak of concurrent jobs)

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on an idle thread, or on a new one when all are busy."""
        with self._lock:
            reuse = self._idle > 0
            if reuse:
                self._idle -= 1
            else:
                self.started += 1
                number = self.started
        self._jobs.put((fn, args))
        if not reuse:
            threading.Thread(target=self._loop, name=f"{self._name}-{number}", daemon=True).start()

    def _loop(self) -> None:
        while True:
            fn, args = self._jobs.get()
            try:
                fn(*args)
            except BaseException:  # noqa: BLE001 - jobs report their own errors; keep the thread alive
                traceback.print_exc()
            finally:
                del fn, args  # drop the request before waiting for the next one
                with self._lock:
                    self._idle += 1
