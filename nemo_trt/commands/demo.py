"""`nemo-trt demo`: the whole chain on the embedded tiny model, CPU only, through real Triton."""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # pragma: no cover
    from nemo_trt.serve.client import Protocol

DEMO_QUESTIONS = {"on": "What is the capital of France?", "off": "What colour is the sky?"}


@click.command("demo")
@click.option("--gpu", "gpu", default="h100x2", show_default=True, metavar="PROFILE",
              help="GPU profile whose plan for Super-49B is shown first.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the demo keeps its converted checkpoint and repository "
                   "[default: $NEMO_TRT_CACHE/demo or ~/.cache/nemo-trt/demo].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the tiny model.")
@click.option("--protocol", type=click.Choice(["grpc", "http"]), default="grpc", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary instead of live output.")
def command(gpu: str, workdir: Path | None, seed: int, protocol: Protocol, as_json: bool):
    """Run the whole chain on the tiny model: plan, make, convert, verify, serve, chat.

    \b
    1. plan: how Llama-3.3-Nemotron-Super-49B-v1 would be built on PROFILE (no GPU needed)
    2. make: the tiny DeciLM fixture (every block kind, real Llama-3 tokenizer),
       trained once to follow the reasoning protocol and cached
    3. convert + verify: HF -> TensorRT-LLM checkpoint, checked tensor by tensor
    4. repository: Triton model repository with the CPU reference backend
    5. serve: a real tritonserver on 127.0.0.1 (free ports)
    6. chat: one question with `detailed thinking on`, one with `off`, streamed
    7. clean shutdown

    \b
    Examples:
      nemo-trt demo
      nemo-trt demo --gpu h200x1 --protocol http
      nemo-trt demo --json
    """
    from nemo_trt.build.convert import convert_checkpoint, verify_checkpoint
    from nemo_trt.build.planner import make_plan
    from nemo_trt.build.plan_report import render_plan
    from nemo_trt.build.profiles import load_profile
    from nemo_trt.build.spec import ModelSpec
    from nemo_trt.build.tiny import cache_root, tiny_checkpoint
    from nemo_trt.commands.chat import stream_to_console
    from nemo_trt.console import console, err_console, print_json
    from nemo_trt.errors import NemoTrtError
    from nemo_trt.model_facts import DEFAULT_MODEL, resolve_model
    from nemo_trt.serve.client import GenerateRequest, generate
    from nemo_trt.serve.launcher import TritonServer
    from nemo_trt.serve.repo_writer import write_repository

    out = err_console if as_json else console
    workdir = (workdir or cache_root() / "demo").absolute()
    summary: dict = {"workdir": str(workdir), "stages": {}}

    def stage(name: str, title: str):
        out.rule(f"[bold]{title}")
        return time.perf_counter()

    def done(name: str, began: float, **info) -> None:
        seconds = round(time.perf_counter() - began, 2)
        summary["stages"][name] = {"seconds": seconds, **info}
        out.print(f"[green]✓[/] {name} ({seconds:.1f} s)")

    t = stage("plan", f"1/6 plan: {DEFAULT_MODEL} on {gpu}")
    plan = make_plan(ModelSpec.from_path(resolve_model(DEFAULT_MODEL)), load_profile(gpu))
    render_plan(plan, out, show_reasons=False)
    out.print(f"(the reasons behind each setting: nemo-trt plan --gpu {gpu})")
    done("plan", t, profile=plan.profile, precision=plan.precision, tp=plan.tp, pp=plan.pp,
         kv_tokens=plan.kv_tokens, concurrent_sequences=plan.concurrent_sequences)

    t = stage("make", "2/6 tiny DeciLM model (trained once, then cached)")
    with out.status("training / loading the tiny model…"):
        tiny = tiny_checkpoint(seed)
    out.print(f"checkpoint: {tiny}")
    done("make", t, checkpoint=str(tiny))

    t = stage("convert", "3/6 convert to a TensorRT-LLM checkpoint (TP1, BF16) and verify")
    # Keyed by the tiny checkpoint's cache name: a rerun finds its conversion up to date.
    converted = workdir / tiny.name / "checkpoint-tp1-bf16"
    conversion = convert_checkpoint(tiny, converted, tp=1, pp=1, precision="bf16", progress=not as_json)
    out.print(f"{'up to date' if conversion.up_to_date else 'written'}: {converted}")
    report = verify_checkpoint(tiny, converted, logits=True)
    if not report.ok:
        raise NemoTrtError("verification of the converted tiny checkpoint failed: " + "; ".join(report.problems),
                           "report this as a bug; run `nemo-trt verify` for the full report")
    out.print(f"verified {report.tensors_checked} tensors; reference logits from both sides agree")
    done("convert", t, converted=str(converted), up_to_date=conversion.up_to_date,
         tensors_checked=report.tensors_checked)

    t = stage("repository", "4/6 Triton model repository (CPU reference backend)")
    repo = write_repository(workdir / tiny.name / "repository", tokenizer_dir=tiny, reference_dir=converted, force=True)
    out.print(f"repository: {repo}  (ensemble = preprocessing -> generate -> tensorrt_llm)")
    done("repository", t, repository=str(repo))

    t = stage("serve", "5/6 tritonserver (127.0.0.1, free ports)")
    chats = []
    with TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0) as server:
        url = server.grpc_url if protocol == "grpc" else server.http_url
        out.print(f"ready in {server.startup_seconds:.1f} s: gRPC {server.grpc_url}  HTTP {server.http_url}  "
                  f"metrics {server.metrics_url}")
        done("serve", t, grpc=server.grpc_url, http=server.http_url)

        t = stage("chat", "6/6 chat: reasoning on, then off")
        for mode, question in DEMO_QUESTIONS.items():
            request = GenerateRequest(messages=[{"role": "user", "content": question}], reasoning=mode,
                                      max_tokens=96, temperature=0.0)
            out.print(f"[bold]user[/] (detailed thinking {mode}): {question}")
            if as_json:
                result = generate(url, request, protocol=protocol)
            else:
                result = stream_to_console(url, request, protocol=protocol)
            chats.append({"reasoning_mode": mode, "question": question, "reasoning": result.reasoning,
                          "answer": result.answer, "num_output_tokens": result.num_output_tokens,
                          "ttft_ms": None if result.ttft is None else round(result.ttft * 1000, 1),
                          "finish_reason": result.finish_reason})
        done("chat", t)
    out.print("[green]✓[/] server stopped cleanly")
    summary["chats"] = chats
    if as_json:
        print_json(summary)
