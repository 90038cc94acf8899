"""The request mix of the stress test and the soak, and what they read off the server.

`StressJobs.next_job()` draws one request: streamed or not, reasoning on or off, 10 % that
drop the connection mid-stream, 5 % malformed. Every well-formed one asks the test-only
scripted stand-in (tests/fixtures/scripted_llm) for a known text with multi-byte
characters (CJK, emoji with modifiers) and, with reasoning on, a `<think>` section, so the
exact text / reasoning / answer each must produce is known in advance.
"""
from __future__ import annotations

import os
import random
import re
import time
import urllib.request
from collections import Counter
from pathlib import Path

import json
import shutil
from types import SimpleNamespace

from loadgen import Job, Record
from tokenizers import Tokenizer

from nemo_trt.serve.postprocess import TextStream
from nemo_trt.serve.reasoning import split_text
from nemo_trt.serve.repo_writer import write_repository
from nemo_trt.serve.token_ensemble import TOKEN_ENSEMBLE, TOKEN_OUTPUTS

STAND_IN = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "scripted_llm" / "model.py"

ANSWERS = [
    "The answer is 42 🎉 and 東京 is mild today (18 °C); a café au lait costs ¥480 ☕.",
    "Here is the plan: 1) read the numbers 👍🏽 2) check 3.14 × 2 = 6.28 3) write 答案是正确的 ✅.",
    "日本語のテキストも大丈夫です。Emoji sequences 👨‍👩‍👧 and “quotes” survive, naïvely.",
    "Short answer: yes.",
]
REASONING = [
    "Let me think about this step by step: 你好, café 🙂👍🏽, the user wants a number.",
    "First I recall that naïve estimates fail, so I check twice — 東京の天気 first.",
]
MALFORMED = [
    ({"messages": '[{"role": "user"', "max_tokens": 16}, "not valid JSON"),
    ({"text_input": "hi", "max_tokens": 0}, "max_tokens must be >= 1"),
    ({"text_input": "hi", "reasoning": "maybe"}, "reasoning must be"),
    ({"max_tokens": 8}, "no prompt"),
]
# Harmless lines the CPU server logs at start (no GPU, no NVML/DCGM); anything else that
# is an error line is a failure.
_HARMLESS = ("CudaDriverHelper", "pinned system memory", "unable to create stream", "NVML", "DCGM",
             "GPU metrics")


# A crash: Triton's signal handler line, glibc's heap checks (a corrupted heap aborts the
# server, whose handler can then deadlock in malloc: the server hangs instead of exiting).
_FATAL = re.compile(r"^Signal \((?!15\))\d+\) received|^(malloc|free|realloc|double free|corrupted)\b.*|"
                    r"^munmap_chunk\(\)|"
                    # a response Triton's HTTP frontend lost (nemo_trt/serve/http_backpressure.c)
                    r"^nemo-trt http-backpressure: .*(drops this response|response dropped)")


def stand_in_repository(work: Path, tokenizer_dir: Path, max_batch_size: int, max_input_len: int = 1024,
                        max_seq_len: int = 4096) -> Path:
    """The real writer's repository with the test-only scripted stand-in in the `tensorrt_llm` slot."""
    (work / "ref").mkdir(parents=True)
    (work / "ref" / "config.json").write_text(json.dumps({"vocab_size": 128256,
                                                         "max_position_embeddings": max_seq_len}))
    plan = SimpleNamespace(build=SimpleNamespace(max_batch_size=max_batch_size, max_input_len=max_input_len,
                                                 max_seq_len=max_seq_len, max_num_tokens=None))
    repo = write_repository(work / "repo", tokenizer_dir=tokenizer_dir, reference_dir=work / "ref", plan=plan)
    shutil.copy(STAND_IN, repo / "tensorrt_llm" / "1" / "model.py")
    return repo


class StressJobs:
    def __init__(self, tokenizer_json: Path, seed: int = 0, disconnect_rate: float = 0.10,
                 malformed_rate: float = 0.05, disconnect_protocols: tuple[str, ...] = ("grpc", "http"),
                 token_every: int = 4):
        """`token_every`: every such gRPC client calls ensemble_tokens and makes its texts itself
        (0: none), checked against the same expected texts."""
        self.tokenizer = Tokenizer.from_file(str(tokenizer_json))
        self.token_every = token_every
        self.random = random.Random(seed)
        self.disconnect_rate = disconnect_rate
        self.malformed_rate = malformed_rate
        self.disconnect_protocols = disconnect_protocols
        self.scripts = []  # (text, reasoning on?, tokens)
        for answer in ANSWERS:
            self.scripts.append((answer, False, self._count(answer)))
            for thought in REASONING:
                text = f"<think>\n{thought}\n</think>\n\n{answer}"
                self.scripts.append((text, True, self._count(text)))

    def _count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def plain_job(self) -> Job:
        text, _, n = self.scripts[0]
        return self._job(text, False, n + 8, stream=True, label="plain")

    def _job(self, text: str, reasoning: bool, max_tokens: int, stream: bool, label: str) -> Job:
        split = split_text(text)
        return Job({"text_input": "SCRIPT:" + text, "max_tokens": max_tokens, "stream": stream,
                    "reasoning": "on" if reasoning else "off"},
                   stream=stream, label=label,
                   expected={"text_output": text, "reasoning_output": split.reasoning, "answer_output": split.answer})

    def next_job(self, client=None) -> Job:
        r = self.random.random()
        if r < self.malformed_rate:
            inputs, message = self.random.choice(MALFORMED)
            stream = self.random.random() < 0.5
            return self._maybe_tokens(Job(dict(inputs, stream=stream), stream=stream, expect_error=True,
                                          label=f"malformed:{message}"), client)
        text, reasoning, n = self.random.choice(self.scripts)
        stream = self.random.random() < 0.75
        # Half end by themselves (an empty final response), half exactly at the budget
        # (the final flag rides on the last token).
        max_tokens = n if self.random.random() < 0.5 else n + 32
        kind = "streamed" if stream else "non_streamed"
        job = self._job(text, reasoning, max_tokens, stream, f"{kind}:{'on' if reasoning else 'off'}:{max_tokens}")
        protocol = getattr(client, "protocol", None)
        drops = protocol is None or protocol in self.disconnect_protocols
        if stream and drops and r < self.malformed_rate + self.disconnect_rate:
            job.disconnect_after = self.random.randint(1, max(1, n // 2))
            job.expected = None
            job.label = "disconnect:" + job.label
        return self._maybe_tokens(job, client)

    def _maybe_tokens(self, job: Job, client) -> Job:  # noqa: ANN001
        index = getattr(client, "index", None)
        if self.token_every and getattr(client, "protocol", None) == "grpc" and index is not None and \
                index % self.token_every == self.token_every - 1:
            job.model, job.outputs, job.label = TOKEN_ENSEMBLE, TOKEN_OUTPUTS, job.label + ":tokens"
            job.text_stream = lambda: TextStream(self.tokenizer)
        return job

    def stock_job(self, client=None) -> Job:
        """The same mix in the stock TensorRT-LLM ensemble's inputs (bench/bench_serving_stock.py).

        Its texts are not checked (the stock postprocessing decodes each token on its own). Its
        malformed request is one the stock `preprocessing` itself rejects: embedding-bias words
        and weights of different lengths, an AssertionError raised from `execute()` (the stock
        model's only error path: the Python backend then fails every request of that batch)."""
        job = self.next_job(client)
        if job.expect_error:
            return Job({"text_input": "hi", "max_tokens": 8, "stream": job.stream,
                        "embedding_bias_words": ["a", "b"], "embedding_bias_weights": [1.0]},
                       stream=job.stream, expect_error=True, label="malformed:stock embedding bias",
                       outputs=("text_output",))
        inputs = {"text_input": job.inputs["text_input"], "max_tokens": job.inputs["max_tokens"],
                  "stream": job.stream}
        return Job(inputs, stream=job.stream, disconnect_after=job.disconnect_after, label=job.label,
                   outputs=("text_output",))

    @staticmethod
    def counts(records: list[Record]) -> Counter:
        counts: Counter = Counter()
        for record in records:
            label = record.job.label
            if label.startswith("malformed"):
                counts["malformed"] += 1
            elif record.disconnected:
                counts["disconnected"] += 1
            elif label.startswith("streamed"):
                counts["streamed"] += 1
            elif label.startswith("non_streamed"):
                counts["non_streamed"] += 1
            if ":off:" in label:
                counts["reasoning_off"] += 1
            if label.endswith(":tokens") and not record.disconnected and not record.job.expect_error:
                counts["tokens"] += 1
        return counts


def stub_pids(server_pid: int) -> list[int]:
    """The Python backend stub processes of a tritonserver (its children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == server_pid and b"triton_python_backend_stub" in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)


def rss_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # the process is gone
        return 0
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else 0


def server_errors(log_file: str | os.PathLike | None) -> list[str]:
    """Error lines of a tritonserver log (glog `E...`), without the CPU server's harmless start-up ones."""
    if not log_file or not Path(log_file).is_file():
        return []
    lines = Path(log_file).read_text(errors="replace").splitlines()
    return [line for line in lines if (re.match(r"^E\d{4} ", line) and not any(h in line for h in _HARMLESS))
            or _FATAL.search(line)]


def process_resources(pid: int) -> dict[str, int]:
    """Open file descriptors, threads and RSS (kB) of one process (0 when it is gone)."""
    try:
        fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {"fds": 0, "threads": 0, "rss_kb": 0}
    threads = re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE)
    rss = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return {"fds": fds, "threads": int(threads.group(1)) if threads else 0, "rss_kb": int(rss.group(1)) if rss else 0}


_TCP_STATES = {"01": "established", "06": "time_wait", "08": "close_wait", "04": "fin_wait1", "05": "fin_wait2",
               "09": "last_ack", "0A": "listen"}


def tcp_states(port: int) -> dict[str, int]:
    """Server-side TCP sockets on a local port by state (from /proc/net/tcp)."""
    counts: Counter = Counter()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                counts[_TCP_STATES.get(fields[3], fields[3])] += 1
    return dict(counts)



ENSEMBLES = ("ensemble", TOKEN_ENSEMBLE)


def requests_succeeded(metrics_url: str, models: tuple[str, ...] = ENSEMBLES) -> int:
    """Requests of `models` the server has finished without error and released (their success counters).

    Triton counts a request when it releases it, so once the clients are done this reaches the
    number of well-formed requests they sent, dropped ones included (those end normally in the
    server), unless the server holds some forever (the leak of a cancelled ensemble:
    model_repository/postprocessing/config.pbtxt). Failures are no use here: 2.51 counts a
    failed ensemble request twice.
    """
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    total = 0
    for match in re.finditer(r'^nv_inference_request_success\{([^}]*)\} (\S+)$', text, re.MULTILINE):
        if any(f'model="{model}"' in match.group(1) for model in models):
            total += int(float(match.group(2)))
    return total


def wait_succeeded(metrics_url: str, expected: int, timeout_s: float = 60.0,
                   models: tuple[str, ...] = ENSEMBLES) -> int:
    """Poll until `expected` requests of `models` succeeded (or `timeout_s` passes); the count seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            seen = requests_succeeded(metrics_url, models)
        except OSError:  # the server is gone (a crash: its log says why)
            return -1
        if seen >= expected or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)
