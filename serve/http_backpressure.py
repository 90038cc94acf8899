"""Build and preload the HTTP backpressure library that keeps tritonserver from losing HTTP responses.

The defect (every Triton release to date, 2.51 and 25.06 included): each response of an HTTP
request reaches the HTTP worker thread that owns the connection through libevhtp's
`evthr_defer()`, a 17-byte command on a non-blocking socketpair whose buffer holds about 278
of them; when a worker falls that far behind, the send fails and Triton ignores the failure, so
the response is gone: a `generate` client never gets its status line, a `generate_stream`
client misses a chunk or the end of its stream and waits forever. Streams of thousands of
tokens a second meet it whenever a worker is held up for a fraction of a second (most
connections land on the first idle worker). `http_backpressure.c` explains the fix: in
tritonserver only, such a send waits until the worker has room.

The library is compiled from the packaged C source with the system C compiler into the cache
(once per source version), or taken from $NEMO_TRT_HTTP_BACKPRESSURE_LIB (the Docker image
builds it at image build time).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from nemo_trt.errors import NemoTrtError

SOURCE = Path(__file__).with_name("http_backpressure.c")
LIBRARY_ENV = "NEMO_TRT_HTTP_BACKPRESSURE_LIB"
MODE_ENV = "NEMO_TRT_HTTP_BACKPRESSURE"  # wait (default) | count (report drops, fix nothing) | off
SNDBUF_ENV = "NEMO_TRT_HTTP_BACKPRESSURE_SNDBUF"  # tests: shrink the worker queues to reach the limit
LIBRARY_NAME = "libnemo_trt_http_backpressure.so"


class CannotBuild(NemoTrtError):
    """No C compiler, or the build failed: the launcher serves without the library and says so."""

# What the library prints to the server log (tests and the stress check read these).
ACTIVE_LINE = "nemo-trt http-backpressure: active"
DROP_MARKERS = ("Triton drops this response", "response dropped")


def compile_library(output: Path, compiler: str | None = None) -> Path:
    """Compile SOURCE into `output` (written next to it, then renamed into place)."""
    compiler = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise CannotBuild(
            "no C compiler to build the HTTP backpressure library for tritonserver",
            "install one (Debian/Ubuntu: apt-get install gcc libc6-dev), point $NEMO_TRT_HTTP_BACKPRESSURE_LIB "
            "at a built copy, or serve without it (--no-http-backpressure; HTTP clients can then hang under load)",
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    os.close(fd)
    try:
        result = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-Wall", "-o", tmp, str(SOURCE), "-ldl"],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise CannotBuild(
                f"building the HTTP backpressure library with {compiler} failed:\n{result.stderr.strip()}",
                "install the C library headers (Debian/Ubuntu: apt-get install libc6-dev), or serve without it "
                "(--no-http-backpressure)",
            )
        os.chmod(tmp, 0o755)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return output


def library(cache: Path, env: Mapping[str, str] | None = None) -> Path:
    """The library to preload: $NEMO_TRT_HTTP_BACKPRESSURE_LIB, else the cache's build of this source."""
    env = os.environ if env is None else env
    given = env.get(LIBRARY_ENV)
    if given:
        if not Path(given).is_file():
            raise NemoTrtError(f"${LIBRARY_ENV} names {given}, which does not exist",
                               f"build it with `python -m nemo_trt.serve.http_backpressure {given}`, or unset it")
        return Path(given)
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    built = cache / "native" / f"{LIBRARY_NAME[:-3]}-{digest}.so"
    return built if built.is_file() else compile_library(built)


def preload(env: dict[str, str], lib: Path, mode: str = "wait") -> dict[str, str]:
    """`env` with `lib` first on LD_PRELOAD (whatever else is preloaded stays) and the mode set."""
    rest = [p for p in env.get("LD_PRELOAD", "").replace(" ", ":").split(":") if p and p != str(lib)]
    env["LD_PRELOAD"] = ":".join([str(lib), *rest])
    env.setdefault(MODE_ENV, mode)
    return env


def dropped_lines(log_text: str) -> list[str]:
    """The log lines that report a response Triton dropped."""
    return [line for line in log_text.splitlines() if any(m in line for m in DROP_MARKERS)]


if __name__ == "__main__":  # the Docker image: python -m nemo_trt.serve.http_backpressure /opt/.../lib.so
    if len(sys.argv) != 2:
        sys.exit("usage: python -m nemo_trt.serve.http_backpressure OUTPUT.so")
    try:
        print(compile_library(Path(sys.argv[1])))
    except NemoTrtError as exc:
        sys.exit(f"error: {exc.problem}\nfix: {exc.fix}")
