"""Serving overhead of the CPU reference backend through Triton, against the bare reference model.

Baseline (same run, same machine): the reference model generating in-process, one token per
`Session.step()`, same prompt (a chat turn with reasoning on), same stop id, one torch thread.
Measured: server startup to READY, then per-token latency (ITL) and TTFT for one gRPC stream,
and aggregate tokens/s with 4 concurrent streams (fair round-robin scheduler).
Prints ratios against the baseline and writes bench/results/serve_reference.json.

    python bench/serve_reference.py [--tokens 96] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from nemo_trt.build.convert import convert_checkpoint
    from nemo_trt.build.tiny import tiny_checkpoint
    from nemo_trt.reference import ReferenceModel, SamplingParams
    from nemo_trt.serve.client import GenerateRequest, generate
    from nemo_trt.serve.launcher import TritonServer
    from nemo_trt.serve.repo_writer import write_repository

    tiny = tiny_checkpoint(0)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    converted = work / "converted"
    convert_checkpoint(tiny, converted, tp=1, progress=False)
    repo = write_repository(work / "repo", tokenizer_dir=tiny, reference_dir=converted)

    # one chat turn with reasoning on (~30 tokens, ends at <|eot_id|>); both sides use one torch
    # thread so the comparison holds on a shared machine (OpenMP threads spin under contention)
    import torch

    from nemo_trt.build.tiny import prompt_ids

    question = "What is 2 plus 5?"
    ids = prompt_ids(question, thinking=True)
    config = repo / "tensorrt_llm" / "config.pbtxt"
    one_thread = 'parameters: { key: "reference_num_threads" value: { string_value: "1" } }\n'
    config.write_text(config.read_text() + one_thread)
    torch.set_num_threads(1)
    model = ReferenceModel.from_converted(converted)
    baseline = []
    for _ in range(args.repeats):
        session = model.start_session(ids, SamplingParams(), [128009], args.tokens)
        start = time.perf_counter()
        session.step()
        first = time.perf_counter()
        while session.step() is not None:
            pass
        end = time.perf_counter()
        baseline.append(((first - start), (end - first) / max(1, len(session.output_ids) - 1)))
    base_ttft = statistics.median(b[0] for b in baseline)
    base_itl = statistics.median(b[1] for b in baseline)
    del model

    request = GenerateRequest(messages=[{"role": "user", "content": question}], reasoning="on",
                              max_tokens=args.tokens, temperature=0.0)
    began = time.perf_counter()
    with TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=300) as server:
        startup = time.perf_counter() - began
        generate(server.grpc_url, request, stream=True)  # warm-up
        single = [generate(server.grpc_url, request, stream=True) for _ in range(args.repeats)]
        ttft = statistics.median(r.ttft for r in single)
        itl = statistics.median(r.itl for r in single)
        tokens = single[0].num_output_tokens
        started = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            concurrent = list(pool.map(lambda _: generate(server.grpc_url, request, stream=True), range(4)))
        wall = time.perf_counter() - started
        agg_tps = sum(r.num_output_tokens for r in concurrent) / wall
        conc_itl = statistics.median(r.itl for r in concurrent)

    results = {
        "tokens_per_request": tokens,
        "startup_to_ready_s": round(startup, 2),
        "baseline_in_process": {"ttft_ms": round(base_ttft * 1e3, 2), "itl_ms": round(base_itl * 1e3, 2),
                                "tokens_per_s": round(1 / base_itl, 1)},
        "triton_grpc_stream_1": {"ttft_ms": round(ttft * 1e3, 2), "itl_ms": round(itl * 1e3, 2),
                                 "itl_ratio_vs_baseline": round(itl / base_itl, 2),
                                 "ttft_ratio_vs_baseline": round(ttft / base_ttft, 2)},
        "triton_grpc_stream_4_concurrent": {"aggregate_tokens_per_s": round(agg_tps, 1),
                                            "per_stream_itl_ms": round(conc_itl * 1e3, 2),
                                            "aggregate_ratio_vs_baseline": round(agg_tps * base_itl, 2)},
    }
    print(json.dumps(results, indent=2))
    out = Path(__file__).parent / "results" / "serve_reference.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
