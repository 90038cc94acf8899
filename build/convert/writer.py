"""Stream a safetensors file tensor by tensor, so a rank file never sits in memory.

`safetensors.torch.save_file` needs every tensor at once. The format is simple
(https://github.com/huggingface/safetensors#format): 8-byte little-endian header
length, a JSON header mapping names to {dtype, shape, data_offsets}, then the raw
bytes. Shapes and dtypes are known from the conversion plan before any weight is
read, so the header is written first and the tensors are appended in order. The
file's sha256 is computed on the fly (for manifest.json).

With `threaded=True` the bytes are written and hashed by a thread of this writer
(`write` queues, `flush` waits, `mark` returns an event set when what was queued before it
is written): file writes and sha256 release the GIL, so the TP rank files of a stage are
written and hashed in parallel. The caller bounds the bytes in flight with `mark` events.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import queue
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from nemo_trt.build.hf_checkpoint import TORCH_TO_ST
from nemo_trt.errors import NemoTrtError

# Test hook: called with (path, nbytes) before every data write; a test can raise
# OSError(ENOSPC) here to simulate a full disk.
WRITE_HOOK: Callable[[Path, int], None] | None = None
_SLICE = 8 * 1024 * 1024  # write + hash in cache-sized slices
_IOV_MAX = min(1024, os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024)


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize  # no tensor per call: called for every entry of every rank


def disk_error(path: Path, exc: OSError) -> NemoTrtError:
    if exc.errno == errno.ENOSPC:
        return NemoTrtError(f"disk full while writing {path}",
                            "free space on the output filesystem or choose another --output")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return NemoTrtError(f"cannot write {path}: {exc.strerror}", "choose an output directory you can write to")
    return NemoTrtError(f"cannot write {path}: {exc.strerror or exc}", "check the output filesystem")


def _writev_all(fd: int, views: list[memoryview]) -> None:
    """os.writev until every byte is written (a regular file may take less than asked)."""
    views = list(views)  # resumed rows are re-sliced here, not in the caller's list (it hashes them)
    i = 0
    while i < len(views):
        n = os.writev(fd, views[i:i + _IOV_MAX])
        if n <= 0:
            raise OSError(errno.EIO, "write returned no progress")
        while i < len(views) and n >= len(views[i]):
            n -= len(views[i])
            i += 1
        if n:
            views[i] = views[i][n:]


class StreamingSafetensorsWriter:
    def __init__(self, path: str | Path, entries: Sequence[Entry], metadata: dict[str, str] | None = None,
                 threaded: bool = False):
        self.path = Path(path)
        self._queue: queue.Queue | None = None
        self._error: BaseException | None = None
        self.entries = list(entries)
        self._next = 0
        self._sha = hashlib.sha256()
        header: dict = {"__metadata__": metadata or {"format": "pt"}}
        offset = 0
        for e in self.entries:
            header[e.name] = {"dtype": TORCH_TO_ST[e.dtype], "shape": list(e.shape),
                              "data_offsets": [offset, offset + e.nbytes]}
            offset += e.nbytes
        self.data_bytes = offset
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the reference writer pads the header to 8 bytes
        try:
            self._fh = open(self.path, "wb")
        except OSError as exc:
            raise disk_error(self.path, exc) from exc
        self._write(struct.pack("<Q", len(raw)) + raw)
        if threaded:
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._drain, args=(self._queue,), name=f"write-{self.path.name}",
                                            daemon=True)
            self._thread.start()

    def _write(self, data) -> None:
        try:
            if WRITE_HOOK is not None:
                WRITE_HOOK(self.path, len(data))
            view = memoryview(data)
            for start in range(0, len(view), _SLICE):
                part = view[start:start + _SLICE]
                self._fh.write(part)
                self._sha.update(part)
        except OSError as exc:
            self._fh.close()
            raise disk_error(self.path, exc) from exc

    def _write_tensor(self, t: torch.Tensor) -> None:
        if t.is_contiguous():
            self._write(t.reshape(-1).view(torch.uint8).numpy())
            return
        if t.dim() == 2 and t.stride(1) == 1 and t.shape[1]:
            self._write_rows(t)
            return
        # Other strided views: copy a few MB of rows at a time, never the whole piece.
        rows = max(1, _SLICE // max(1, t[0].numel() * t.element_size()))
        for start in range(0, t.shape[0], rows):
            self._write(t[start:start + rows].contiguous().reshape(-1).view(torch.uint8).numpy())

    def _write_rows(self, t: torch.Tensor) -> None:
        """A row-split piece (each row contiguous, rows strided): gather-write the rows straight from
        the source with writev and hash them in place, instead of first copying them contiguous."""
        b = t.view(torch.uint8).numpy()  # (rows, row bytes); a view, no copy
        per = max(1, min(_IOV_MAX, _SLICE // b.shape[1]))
        try:
            self._fh.flush()  # the buffered header (or an earlier small write) goes first
            fd = self._fh.fileno()
            for start in range(0, b.shape[0], per):
                views = [memoryview(row) for row in b[start:start + per]]
                if WRITE_HOOK is not None:
                    WRITE_HOOK(self.path, len(views) * b.shape[1])
                _writev_all(fd, views)
                for v in views:
                    self._sha.update(v)
        except OSError as exc:
            self._fh.close()
            raise disk_error(self.path, exc) from exc

    def _drain(self, jobs: queue.Queue) -> None:
        while True:
            item = jobs.get()
            try:
                if item is None:
                    return
                if isinstance(item, threading.Event):  # a mark(): everything queued before it is written
                    item.set()
                elif self._error is None:
                    self._write_tensor(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller in flush()
                self._error = exc
            finally:
                item = None  # release the tensor before blocking on the next one
                jobs.task_done()

    def mark(self) -> threading.Event:
        """An event set once every tensor queued so far has been written (or failed: see `check`)."""
        ev = threading.Event()
        if self._queue is None:
            ev.set()
        else:
            self._queue.put(ev)
        return ev

    def check(self) -> None:
        """Re-raise a write error of the writer thread, if any."""
        if self._error is not None:
            raise self._error

    def flush(self) -> None:
        """Wait until every queued tensor is on its way to disk; re-raise a write error here."""
        if self._queue is not None:
            self._queue.join()
        if self._error is not None:
            raise self._error

    def write_chunk(self, name: str, chunk: torch.Tensor, last: bool) -> None:
        """Append the next rows of entry `name` (chunks in order; `last` closes the entry)."""
        e = self.entries[self._next]
        done = getattr(self, "_partial", 0)
        if name != e.name or chunk.dtype != e.dtype or tuple(chunk.shape[1:]) != e.shape[1:]:
            raise AssertionError(f"writer expected rows of {e.name} {e.dtype}{list(e.shape)}, got {name} "
                                 f"{chunk.dtype}{list(chunk.shape)}")
        done += chunk.numel() * chunk.element_size()
        if done > e.nbytes or (last and done != e.nbytes):
            raise AssertionError(f"{e.name}: chunks add up to {done} bytes, entry has {e.nbytes}")
        if chunk.numel():
            if self._queue is not None:
                if self._error is not None:
                    raise self._error
                self._queue.put(chunk)
            else:
                self._write_tensor(chunk)
        self._partial = 0 if last else done
        if last:
            self._next += 1

    def write(self, name: str, tensor: torch.Tensor) -> None:
        e = self.entries[self._next]
        if name != e.name or tuple(tensor.shape) != e.shape or tensor.dtype != e.dtype:
            raise AssertionError(f"writer expected {e.name} {e.dtype}{list(e.shape)}, "
                                 f"got {name} {tensor.dtype}{list(tensor.shape)}")
        if e.nbytes:
            if self._queue is not None:
                if self._error is not None:
                    raise self._error
                self._queue.put(tensor)
            else:
                self._write_tensor(tensor)
        self._next += 1

    def close(self) -> str:
        """Finish the file; returns its sha256."""
        self.flush()
        self._stop()
        if self._next != len(self.entries):
            raise AssertionError(f"{self.path}: {len(self.entries) - self._next} tensors not written")
        try:
            self._fh.flush()
            self._fh.close()
        except OSError as exc:
            raise disk_error(self.path, exc) from exc
        return self._sha.hexdigest()

    def _stop(self) -> None:
        if self._queue is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def abort(self) -> None:
        if self._queue is not None:
            self._error = self._error or RuntimeError("aborted")
            self._stop()
        if not self._fh.closed:
            self._fh.close()
