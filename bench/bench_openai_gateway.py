"""What the OpenAI gateway costs over talking to Triton directly, interleaved in one run.

A repository written by the real writer (the stock layout: preprocessing -> tensorrt_llm ->
postprocessing), whose `tensorrt_llm` slot holds the TEST-ONLY scripted model
(tests/fixtures/scripted_llm, the C++ backend's sending pattern: one engine step per
--token-interval for every active request, streamed or not), served by tritonserver, with one
gateway process (`nemo-trt openai --repo REPO`, as users run it) in front of it. With the
repository's tokenizer the gateway calls `ensemble_tokens` and makes the text itself
(nemo_trt.serve.token_ensemble). The same requests go (A) straight to `ensemble_tokens` with
tritonclient, the text made client-side the same way (TextStream) — the same Triton work as the
gateway's, so B - A is what the gateway adds; (B) through the gateway; and (C) straight to the
text `ensemble` (text_output made in Triton, what a stock Triton client calls), for comparison.
The paths alternate so that noise on the shared machine hits all alike.

Part 1 runs on a server whose stand-in steps without pause (--request-token-interval 0): the
engine's 8 steps are the same on both paths, and at 10 ms each they would only bury the
difference under 80 ms of scheduling noise. Part 2 runs on a second server at --token-interval
(10 ms by default = 100 tokens/s per stream, faster than Super-49B streams on an H100 pair at
16 sequences). Rounds are bounded: a hung round ends the run.

1. Per request (sequential, one connection each), an 8-token answer, reasoning off:
   (a) tritonclient gRPC stream API to ensemble_tokens, stream=false, text made client-side <- baseline
   (b) POST /v1/chat/completions, non-streamed, keep-alive, a minimal HTTP/1.1 client (RawHttp)
   (b*) the same through http.client (its own header parsing timed too: reported beside)
   (c) tritonclient to the text ensemble
   (a') / (b') / (c') the same, streamed (time to the last token's text)
   overhead = p50(b) - p50(a)   (target <= 1 ms); also p50(b') - p50(a') and p50(b) - p50(c).
2. Delivered tokens/s with 16 concurrent streams of N tokens, rounds alternating A/B/C:
   (A) tritonclient.grpc.aio streams of ensemble_tokens + TextStream; (B) openai-style SSE streams
   through the gateway (httpx.AsyncClient); (C) tritonclient.grpc.aio streams of the text ensemble.
   ratio = median tok/s(B) / median tok/s(A)   (target >= 0.95); also B / C.

    python bench/bench_openai_gateway.py [--iterations 300] [--rounds 6] [--tokens 256] [--token-interval 0.01]
                                         [--request-token-interval 0]
    (results: bench/results/openai_gateway.json)
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving_overhead import (  # noqa: E402
    SHORT_ANSWER,
    SHORT_ANSWER_TOKENS,
    TOKENIZER_DIR,
    Stream,
    build_repository,
    percentiles,
    script_text,
)

from nemo_trt.serve.launcher import TritonServer  # noqa: E402
from nemo_trt.serve.postprocess import TextStream  # noqa: E402
from nemo_trt.serve.token_ensemble import TOKEN_ENSEMBLE, TOKEN_OUTPUTS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "openai_gateway.json"
MODEL = "llama-3.3-nemotron-super-49b-v1"
TARGET_OVERHEAD_MS, TARGET_RATIO = 1.0, 0.95
CONCURRENCY = 16
USAGE_TOKENS = re.compile(rb'"completion_tokens":\s*(\d+)')


def chat_body(text: str, max_tokens: int, stream: bool) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "SCRIPT:" + text}], "max_tokens": max_tokens,
            "chat_template_kwargs": {"thinking": False}, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def ensemble_inputs(text: str, max_tokens: int, stream: bool) -> list:
    messages = json.dumps([{"role": "user", "content": "SCRIPT:" + text}])
    values = [("messages", np.array([[messages.encode()]], dtype=object), "BYTES"),
              ("reasoning", np.array([[b"off"]], dtype=object), "BYTES"),
              ("max_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32"),
              ("stream", np.array([[stream]], dtype=bool), "BOOL")]
    inputs = []
    for name, value, dtype in values:
        tensor = grpcclient.InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs


# --------------------------------------------------------------------------- gateway process
GATEWAY_ARGS: list[str] = []  # --no-detokenize: the gateway reads text_output from the text ensemble
GATEWAY_CPUS: set[int] = set()  # --pin: the gateway on its own core(s), Triton and this client on the rest


def start_gateway(grpc_url: str, repo: Path, log: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "nemo_trt.cli", "openai", "--triton", grpc_url, "--port", "0", "--repo", str(repo),
         "--json", *GATEWAY_ARGS], stdout=subprocess.PIPE, stderr=open(log, "w"), text=True,  # noqa: SIM115
        preexec_fn=(lambda: os.sched_setaffinity(0, GATEWAY_CPUS)) if GATEWAY_CPUS else None)
    lines = []
    for line in process.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if line.startswith("}"):
            break
    return process, json.loads("".join(lines))["openai"].removesuffix("/v1")


# --------------------------------------------------------------------------- 1. per request
class Http:
    """A keep-alive HTTP/1.1 client (stdlib http.client): the streamed path, and (b*)."""

    def __init__(self, base: str):
        host, port = base.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=60)
        self.headers = {"Content-Type": "application/json"}

    def post(self, path: str, body: bytes) -> http.client.HTTPResponse:
        self.connection.request("POST", path, body, self.headers)
        return self.connection.getresponse()

    def close(self) -> None:
        self.connection.close()


class RawHttp:
    """The leanest keep-alive HTTP/1.1 client: request bytes made once, one `sendall`, the time
    stopped when the answer's last byte is in. The direct path stops its clock in grpc's
    callback, before tritonclient makes anything of the response; this stops the gateway's at
    the same point (http.client parses headers with email.parser, ~50 µs that are the client's).
    Non-streamed (Content-Length) answers only."""

    def __init__(self, base: str, path: str, body: bytes):
        host, port = base.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.request = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    def post(self) -> tuple[int, bytes]:
        """(status, body) of one answer."""
        self.sock.sendall(self.request)
        status = int(self.file.readline().split()[1])
        length = 0
        while (line := self.file.readline()) not in (b"\r\n", b""):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, self.file.read(length)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def measure_requests(grpc_url: str, gateway: str, iterations: int, warmup: int,
                     tokenizer: Tokenizer) -> dict[str, list[float]]:
    stream = Stream(grpc_url)
    client = Http(gateway)
    whole_in = ensemble_inputs(SHORT_ANSWER, 16, stream=False)
    streamed_in = ensemble_inputs(SHORT_ANSWER, 16, stream=True)
    whole_body = json.dumps(chat_body(SHORT_ANSWER, 16, False)).encode()
    streamed_body = json.dumps(chat_body(SHORT_ANSWER, 16, True)).encode()

    def direct_whole():
        start, got = stream.request("ensemble", whole_in)
        assert got[-1][1]["text_output"].reshape(-1)[0].decode() == SHORT_ANSWER
        return got[-1][0] - start

    def tokens_text(got) -> tuple[float, str]:
        """ensemble_tokens' responses -> (when the last text was made, the text made client-side): each
        response's arrival plus what making its text took, as if made when it arrived (as the gateway does)."""
        text_stream, text, last = TextStream(tokenizer), "", 0.0
        for i, (arrived, outputs) in enumerate(got):
            began = time.perf_counter()
            ids = outputs["output_ids"].reshape(-1)[:int(outputs["sequence_length"].reshape(-1)[0])]
            delta = text_stream.feed(ids.tolist()).text
            if i == len(got) - 1:
                delta += text_stream.finish().text
            if delta:
                text, last = text + delta, arrived + time.perf_counter() - began
        return last, text

    def direct_tokens_whole():
        start, got = stream.request(TOKEN_ENSEMBLE, whole_in)
        last, text = tokens_text(got)
        assert text == SHORT_ANSWER, text
        return last - start

    def direct_tokens_streamed():
        start, got = stream.request(TOKEN_ENSEMBLE, streamed_in)
        last, text = tokens_text(got)
        assert text == SHORT_ANSWER, text
        return last - start

    raw = RawHttp(gateway, "/v1/chat/completions", whole_body)

    def gateway_whole():
        start = time.perf_counter()
        status, data = raw.post()
        elapsed = time.perf_counter() - start
        assert status == 200 and json.loads(data)["choices"][0]["message"]["content"] == SHORT_ANSWER, data
        return elapsed

    def gateway_whole_http_client():
        start = time.perf_counter()
        response = client.post("/v1/chat/completions", whole_body)
        data = response.read()
        elapsed = time.perf_counter() - start
        assert json.loads(data)["choices"][0]["message"]["content"] == SHORT_ANSWER, data
        return elapsed

    def direct_streamed():
        start, got = stream.request("ensemble", streamed_in)
        texts = [(t, o["text_output"].reshape(-1)[0].decode()) for t, o in got]
        assert "".join(text for _, text in texts) == SHORT_ANSWER
        return max(t for t, text in texts if text) - start  # the last token, as on the gateway side

    def gateway_streamed():
        start = time.perf_counter()
        response = client.post("/v1/chat/completions", streamed_body)
        text, last = "", start
        while True:
            line = response.readline()
            if not line:
                break
            if line.startswith(b"data: {"):
                event = json.loads(line[6:])
                if event["choices"] and event["choices"][0]["delta"].get("content"):
                    text += event["choices"][0]["delta"]["content"]
                    last = time.perf_counter()
        assert text == SHORT_ANSWER, text
        return last - start

    paths = {"direct_non_streamed": direct_whole, "direct_tokens_non_streamed": direct_tokens_whole,
             "gateway_non_streamed": gateway_whole, "gateway_non_streamed_http_client": gateway_whole_http_client,
             "direct_streamed": direct_streamed,
             "direct_tokens_streamed": direct_tokens_streamed, "gateway_streamed": gateway_streamed}
    samples: dict[str, list[float]] = {name: [] for name in paths}
    try:
        for i in range(warmup + iterations):
            for name, run in paths.items():
                elapsed = run()
                if i >= warmup:
                    samples[name].append(elapsed)
    finally:
        stream.close()
        client.close()
        raw.close()
    return samples


# --------------------------------------------------------------------------- 2. tokens/s at 16 streams
async def _concurrently(client, one) -> tuple[int, float]:  # noqa: ANN001
    """CONCURRENCY copies of `one()` at once: (tokens they counted, seconds), then the client closed."""
    try:
        start = time.perf_counter()
        counts = await asyncio.gather(*(one() for _ in range(CONCURRENCY)))
        return sum(counts), time.perf_counter() - start
    finally:
        await client.close()


async def direct_round(grpc_url: str, text: str, tokens: int) -> tuple[int, float]:
    """16 concurrent ensemble streams; per token only the final flag is looked at (as lean a
    client as the gateway path's, which reads SSE lines and the usage at the end)."""
    client = grpcaio.InferenceServerClient(grpc_url)

    async def one() -> int:
        inputs = ensemble_inputs(text, tokens, stream=True)

        async def requests():
            yield {"model_name": "ensemble", "inputs": inputs,
                   "outputs": [grpcclient.InferRequestedOutput(n) for n in ("text_output", "num_output_tokens")]}

        async for result, error in client.stream_infer(requests()):
            assert error is None, error
            final = result.get_response().parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                return int(result.as_numpy("num_output_tokens").reshape(-1)[0])
        return 0

    return await _concurrently(client, one)


async def direct_tokens_round(grpc_url: str, text: str, tokens: int, tokenizer: Tokenizer) -> tuple[int, float]:
    """16 concurrent ensemble_tokens streams, each response's ids made into text client-side (what
    the gateway does with them): the same Triton work as the gateway path, without HTTP."""
    client = grpcaio.InferenceServerClient(grpc_url)

    async def one() -> int:
        inputs = ensemble_inputs(text, tokens, stream=True)
        text_stream, count = TextStream(tokenizer), 0

        async def requests():
            yield {"model_name": TOKEN_ENSEMBLE, "inputs": inputs,
                   "outputs": [grpcclient.InferRequestedOutput(n) for n in TOKEN_OUTPUTS]}

        async for result, error in client.stream_infer(requests()):
            assert error is None, error
            response = result.get_response()
            ids = result.as_numpy("output_ids")
            if ids is not None:
                ids = ids.reshape(-1)[:int(result.as_numpy("sequence_length").reshape(-1)[0])]
                text_stream.feed(ids.tolist())
                count += len(ids)
            final = response.parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                text_stream.finish()
                return count
        return 0

    return await _concurrently(client, one)


async def gateway_round(gateway: str, text: str, tokens: int) -> tuple[int, float]:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=gateway, timeout=120, limits=limits) as http:
        async def one() -> int:
            async with http.stream("POST", "/v1/chat/completions", json=chat_body(text, tokens, True)) as response:
                tail = b""
                async for raw in response.aiter_raw():
                    tail = (tail + raw)[-600:]  # the usage chunk and [DONE] end the stream
            found = USAGE_TOKENS.search(tail.rsplit(b'"usage":', 1)[1])
            return int(found.group(1)) if found else 0

        start = time.perf_counter()
        counts = await asyncio.gather(*(one() for _ in range(CONCURRENCY)))
        return sum(counts), time.perf_counter() - start


def cpu_seconds(pid: int, tree: bool = False) -> float:
    """utime + stime of a process (and its descendants: Triton's Python stubs)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    if tree:
        for child in open(f"/proc/{pid}/task/{pid}/children").read().split():
            total += cpu_seconds(int(child), True)
    return total


ROUND_TIMEOUT_S = 120


def bounded(coroutine, what: str):  # noqa: ANN001, ANN201
    async def run():  # noqa: ANN202
        return await asyncio.wait_for(coroutine, ROUND_TIMEOUT_S)

    try:
        return asyncio.run(run())
    except asyncio.TimeoutError:
        raise SystemExit(f"{what}: no answer within {ROUND_TIMEOUT_S} s — the server hung (the ensemble's "
                         "known hang at high token rates, issue 9); rerun, or raise --token-interval") from None


def measure_throughput(grpc_url: str, gateway: str, text: str, tokens: int, rounds: int, gateway_pid: int,
                       triton_pid: int, tokenizer: Tokenizer) -> dict:
    def round_of(path: str):  # noqa: ANN202
        if path == "direct":
            return direct_round(grpc_url, text, tokens)
        if path == "direct_tokens":
            return direct_tokens_round(grpc_url, text, tokens, tokenizer)
        return gateway_round(gateway, text, tokens)

    paths = ("direct", "direct_tokens", "gateway")
    for path in paths:
        bounded(round_of(path), f"warm-up, {path}")
    runs: dict[str, list[float]] = {path: [] for path in paths}
    cpu: dict[str, dict[str, list[float]]] = {p: {"gateway": [], "triton": [], "client": []} for p in runs}
    for i in range(rounds):
        order = paths if i % 2 == 0 else paths[::-1]
        for path in order:
            before = (cpu_seconds(gateway_pid), cpu_seconds(triton_pid, tree=True), time.process_time())
            count, seconds = bounded(round_of(path), f"round {i + 1}, {path}")
            after = (cpu_seconds(gateway_pid), cpu_seconds(triton_pid, tree=True), time.process_time())
            assert count == CONCURRENCY * tokens, (path, count)
            runs[path].append(count / seconds)
            for name, b, a in zip(("gateway", "triton", "client"), before, after):
                cpu[path][name].append((a - b) / count * 1e6)
    direct, through = statistics.median(runs["direct"]), statistics.median(runs["gateway"])
    same = statistics.median(runs["direct_tokens"])
    return {"concurrency": CONCURRENCY, "tokens_per_stream": tokens, "rounds": rounds,
            "tokens_per_s": {k: [round(v, 1) for v in vs] for k, vs in runs.items()},
            "direct_tokens_per_s_p50": round(direct, 1), "gateway_tokens_per_s_p50": round(through, 1),
            "direct_token_model_tokens_per_s_p50": round(same, 1),
            # the gateway calls ensemble_tokens: its overhead is measured against a tritonclient client
            # of that same model that makes the text itself; against the text ensemble (what a stock
            # Triton client calls) for comparison
            "ratio": round(through / same, 4), "ratio_vs_text_ensemble": round(through / direct, 4),
            # CPU spent per delivered token (µs, p50 of the rounds): where the difference goes
            "cpu_us_per_token": {path: {name: round(statistics.median(v), 1) for name, v in parts.items()}
                                 for path, parts in cpu.items()}}


# --------------------------------------------------------------------------- main
@contextlib.contextmanager
def serving(repo: Path, logs: Path, interval: float):  # noqa: ANN201
    """tritonserver (the stand-in stepping every `interval` s) and a gateway in front of it."""
    logs.mkdir(parents=True, exist_ok=True)
    os.environ["NEMO_TRT_SCRIPTED_TOKEN_INTERVAL_S"] = str(interval)
    with TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, log_file=logs / "server.log",
                      startup_timeout=180) as server:
        gateway_process, gateway = start_gateway(server.grpc_url, repo, logs / "gateway.log")
        try:
            yield server, gateway_process, gateway
        finally:
            gateway_process.send_signal(signal.SIGINT)
            gateway_process.wait(30)


def run(iterations: int, warmup: int, rounds: int, tokens: int, interval: float, request_interval: float = 0.0,
        log=print) -> dict:
    load_start = os.getloadavg()
    tokenizer = Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json"))
    work = Path(tempfile.mkdtemp(prefix="bench-openai-gateway-"))
    repo = build_repository(work)
    with serving(repo, work / "requests", request_interval) as (server, gateway_process, gateway):
        log(f"triton ready in {server.startup_seconds:.1f} s, gateway at {gateway} (stand-in step "
            f"{request_interval * 1e3:g} ms); {iterations} interleaved requests per path (+{warmup} warm-up) ...")
        before = cpu_seconds(gateway_process.pid)
        samples = measure_requests(server.grpc_url, gateway, iterations, warmup, tokenizer)
        # the gateway serves only paths (b), (b*) and (b'): its CPU over their requests (warm-up included)
        gateway_cpu_us = (cpu_seconds(gateway_process.pid) - before) / (3 * (iterations + warmup)) * 1e6
        p50 = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
        log(f"  overhead p50 {p50['gateway_non_streamed'] - p50['direct_tokens_non_streamed']:.3f} ms")
    text = script_text(tokenizer, tokens).replace("<think>", "").replace("</think>", "")
    with serving(repo, work / "throughput", interval) as (server, gateway_process, gateway):
        log(f"{rounds} rounds x 2 paths of {CONCURRENCY} concurrent streams x {tokens} tokens (stand-in step "
            f"{interval * 1e3:g} ms) ...")
        throughput = measure_throughput(server.grpc_url, gateway, text, tokens, rounds, gateway_process.pid,
                                        server.process.pid, tokenizer)
    latency = {name: percentiles(values) for name, values in samples.items()}
    # same Triton model on both paths (ensemble_tokens; the text made client-side on the direct one)
    overhead = p50["gateway_non_streamed"] - p50["direct_tokens_non_streamed"]
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_start": [round(x, 2) for x in load_start],
                    "load_average": [round(x, 2) for x in os.getloadavg()]},
        "server": "tritonserver 2.51 (nvidia-pytriton wheel), python backend, CPU; scripted engine",
        "token_interval_s": interval,
        "request_token_interval_s": request_interval,
        "gateway": "nemo-trt openai (uvicorn, uvloop, httptools) in its own process",
        "gateway_args": GATEWAY_ARGS,
        "pinned": {"gateway_cpus": sorted(GATEWAY_CPUS), "triton_and_client_cpus": sorted(os.sched_getaffinity(0))}
        if GATEWAY_CPUS else None,
        "iterations": iterations, "warmup": warmup, "answer_tokens": SHORT_ANSWER_TOKENS,
        "latency_ms": latency,
        "overhead_ms": round(overhead, 3),
        "overhead_streamed_ms": round(p50["gateway_streamed"] - p50["direct_tokens_streamed"], 3),
        "overhead_p10_ms": round(latency["gateway_non_streamed"]["p10"]
                                 - latency["direct_tokens_non_streamed"]["p10"], 3),
        # each iteration times every path back to back: the median of those differences is the
        # least load-sensitive figure on a shared machine
        "overhead_paired_p50_ms": round(statistics.median(
            b - a for a, b in zip(samples["direct_tokens_non_streamed"], samples["gateway_non_streamed"])) * 1e3, 3),
        # against a stock Triton client of the text ensemble (text_output made in Triton)
        "overhead_vs_text_ensemble_ms": round(p50["gateway_non_streamed"] - p50["direct_non_streamed"], 3),
        # the same requests through http.client (its header parsing timed too)
        "overhead_http_client_ms": round(p50["gateway_non_streamed_http_client"]
                                         - p50["direct_tokens_non_streamed"], 3),
        "gateway_cpu_us_per_request": round(gateway_cpu_us, 1),
        "overhead_target_ms": TARGET_OVERHEAD_MS,
        "overhead_meets_target": overhead <= TARGET_OVERHEAD_MS,
        "throughput": throughput,
        "throughput_ratio_target": TARGET_RATIO,
        "throughput_meets_target": throughput["ratio"] >= TARGET_RATIO,
    }


def report(result: dict) -> str:
    lat = result["latency_ms"]
    lines = ["path                         p10 ms    p50 ms    p90 ms"]
    for name, v in lat.items():
        lines.append(f"{name:26s} {v['p10']:8.3f}  {v['p50']:8.3f}  {v['p90']:8.3f}")
    lines.append(f"overhead p50(gateway) - p50(direct_tokens) = {result['overhead_ms']:.3f} ms non-streamed, "
                 f"{result['overhead_streamed_ms']:.3f} ms streamed (target <= {result['overhead_target_ms']} ms: "
                 f"{'met' if result['overhead_meets_target'] else 'MISSED'}); p10 difference "
                 f"{result['overhead_p10_ms']:.3f} ms, median of paired differences "
                 f"{result['overhead_paired_p50_ms']:.3f} ms; gateway CPU "
                 f"{result['gateway_cpu_us_per_request']:.0f} us per request; vs the text ensemble "
                 f"{result['overhead_vs_text_ensemble_ms']:.3f} ms; with http.client as the client "
                 f"{result['overhead_http_client_ms']:.3f} ms")
    lines.append(f"load average {result['machine']['load_average_start']} -> {result['machine']['load_average']}")
    t = result["throughput"]
    lines.append(f"{t['concurrency']} streams x {t['tokens_per_stream']} tokens: direct (ensemble_tokens) "
                 f"{t['direct_token_model_tokens_per_s_p50']} tok/s, gateway {t['gateway_tokens_per_s_p50']} tok/s, "
                 f"ratio {t['ratio']:.3f} (target >= {result['throughput_ratio_target']}: "
                 f"{'met' if result['throughput_meets_target'] else 'MISSED'}); direct (text ensemble) "
                 f"{t['direct_tokens_per_s_p50']} tok/s, ratio {t['ratio_vs_text_ensemble']:.3f}")
    lines.append(f"rounds: {t['tokens_per_s']}")
    lines.append(f"CPU us per delivered token (p50): {t['cpu_us_per_token']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=300, help="timed requests per path (default 300)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed rounds first (default 20)")
    parser.add_argument("--rounds", type=int, default=6, help="throughput rounds per path (default 6)")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per stream in the throughput part")
    parser.add_argument("--token-interval", type=float, default=0.01,
                        help="seconds between the scripted engine's steps in the throughput part (default 0.01)")
    parser.add_argument("--request-token-interval", type=float, default=0.0,
                        help="seconds between its steps in the per-request part (default 0: no pause)")
    parser.add_argument("--pin", action="store_true",
                        help="the gateway alone on the last CPU, Triton and the clients on the others (as on a GPU "
                             "server, where the gateway runs on cores Triton does not need)")
    parser.add_argument("--no-detokenize", action="store_true",
                        help="run the gateway with --no-detokenize (text_output from the text ensemble)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.no_detokenize:
        GATEWAY_ARGS.append("--no-detokenize")
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            parser.error("--pin needs at least 2 CPUs")
        GATEWAY_CPUS.add(cpus[-1])
        os.sched_setaffinity(0, set(cpus[:-1]))  # this client and tritonserver (started from here) inherit it
    result = run(args.iterations, args.warmup, args.rounds, args.tokens, args.token_interval,
                 args.request_token_interval,
                 log=lambda m: print(m, file=sys.stderr))
    print(report(result))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
