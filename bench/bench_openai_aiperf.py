"""NVIDIA AIPerf (a standard OpenAI-API LLM benchmark client) against the gateway.

Sets up what bench_openai_gateway.py uses (tritonserver, the scripted engine in the
`tensorrt_llm` slot at --token-interval per token, `nemo-trt openai` in front), then runs
`aiperf profile` on /v1/chat/completions, streamed, and keeps its summary. AIPerf pulls
numpy 2, which the server's environment must not have (cpu-triton.md §5): install it in a
venv of its own and pass its binary:

    python3 -m venv /tmp/aiperf-venv && /tmp/aiperf-venv/bin/pip install aiperf
    python bench/bench_openai_aiperf.py --aiperf /tmp/aiperf-venv/bin/aiperf --tokenizer DIR
    (results: bench/results/openai_gateway_aiperf.json)

--tokenizer is a directory AIPerf can load with transformers (tokenizer.json +
tokenizer_config.json, e.g. the tiny checkpoint from `nemo-trt make-tiny`): it sizes the
synthetic prompts. Token counts are the server's (`--use-server-token-count`).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_openai_gateway import start_gateway  # noqa: E402
from bench_serving_overhead import build_repository  # noqa: E402

from nemo_trt.serve.launcher import TritonServer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "openai_gateway_aiperf.json"
MODEL = "llama-3.3-nemotron-super-49b-v1"
KEPT = ("request_throughput", "request_latency", "request_count", "time_to_first_token", "inter_token_latency",
        "output_token_throughput", "output_token_throughput_per_user", "output_sequence_length",
        "input_sequence_length", "benchmark_duration", "error_summary", "was_cancelled")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aiperf", required=True, help="the aiperf binary (in a venv of its own)")
    parser.add_argument("--tokenizer", required=True, help="a tokenizer directory aiperf can load")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=160)
    parser.add_argument("--input-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--token-interval", type=float, default=0.01,
                        help="seconds between the scripted engine's streamed tokens (default 0.01)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    load_start = os.getloadavg()
    os.environ["NEMO_TRT_SCRIPTED_TOKEN_INTERVAL_S"] = str(args.token_interval)
    work = Path(tempfile.mkdtemp(prefix="bench-openai-aiperf-"))
    repo = build_repository(work)
    artifacts = work / "aiperf"
    command = [args.aiperf, "profile", "--model", MODEL, "--endpoint-type", "chat", "--streaming",
               "--concurrency", str(args.concurrency), "--request-count", str(args.requests),
               "--warmup-request-count", str(args.concurrency),
               "--prompt-input-tokens-mean", str(args.input_tokens), "--prompt-input-tokens-stddev", "0",
               "--prompt-output-tokens-mean", str(args.output_tokens), "--prompt-output-tokens-stddev", "0",
               "--tokenizer", args.tokenizer, "--use-server-token-count", "--random-seed", "0",
               "--output-artifact-dir", str(artifacts)]
    with TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, log_file=work / "server.log",
                      startup_timeout=180) as server:
        gateway, url = start_gateway(server.grpc_url, repo, work / "gateway.log")
        try:
            env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
            env["PATH"] = str(Path(args.aiperf).parent) + os.pathsep + env.get("PATH", "")
            subprocess.run([*command, "--url", url], env=env, check=True, timeout=1800)
        finally:
            gateway.send_signal(signal.SIGINT)
            gateway.wait(30)
    export = json.loads((artifacts / "profile_export_aiperf.json").read_text())
    result = {
        "client": f"aiperf {export.get('aiperf_version')}",
        "command": " ".join(command[1:]) + " --url <gateway>",
        "server": "tritonserver 2.51 (CPU) + scripted engine + nemo-trt openai, one machine",
        "token_interval_s": args.token_interval,
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average": [round(x, 2) for x in os.getloadavg()],
        **{key: export[key] for key in KEPT if key in export},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    for key in ("request_throughput", "output_token_throughput", "time_to_first_token", "inter_token_latency"):
        value = result.get(key, {})
        print(f"{key}: avg {value.get('avg')} p50 {value.get('p50')} p90 {value.get('p90')} {value.get('unit', '')}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
