"""`nemo-trt demo`: the whole chain on the embedded tiny model, CPU only, through real Triton."""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # pragma: no cover
    from nemo_trt.serve.client import Protocol

DEMO_QUESTIONS = {"on": "What is the capital of France?", "off": "What colour is the sky?"}
DEMO_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
DEMO_TOOL_QUESTION = "What is the weather in Paris?"


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
    7. OpenAI API: the same server behind `nemo-trt openai`'s gateway: one chat with its
       reasoning apart (`reasoning_content`), one tool call
    8. clean shutdown

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

    t = stage("plan", f"1/7 plan: {DEFAULT_MODEL} on {gpu}")
    plan = make_plan(ModelSpec.from_path(resolve_model(DEFAULT_MODEL)), load_profile(gpu))
    render_plan(plan, out, show_reasons=False)
    out.print(f"(the reasons behind each setting: nemo-trt plan --gpu {gpu})")
    done("plan", t, profile=plan.profile, precision=plan.precision, tp=plan.tp, pp=plan.pp,
         kv_tokens=plan.kv_tokens, concurrent_sequences=plan.concurrent_sequences)

    t = stage("make", "2/7 tiny DeciLM model (trained once, then cached)")
    with out.status("training / loading the tiny model…"):
        tiny = tiny_checkpoint(seed)
    out.print(f"checkpoint: {tiny}")
    done("make", t, checkpoint=str(tiny))

    t = stage("convert", "3/7 convert to a TensorRT-LLM checkpoint (TP1, BF16) and verify")
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

    t = stage("repository", "4/7 Triton model repository (CPU reference backend)")
    repo = write_repository(workdir / tiny.name / "repository", tokenizer_dir=tiny, reference_dir=converted, force=True)
    out.print(f"repository: {repo}  (ensemble = preprocessing -> tensorrt_llm -> postprocessing; "
              "ensemble_tokens, which the OpenAI gateway below calls, = the same without postprocessing)")
    done("repository", t, repository=str(repo))

    t = stage("serve", "5/7 tritonserver (127.0.0.1, free ports)")
    chats = []
    with TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0) as server:
        url = server.grpc_url if protocol == "grpc" else server.http_url
        out.print(f"ready in {server.startup_seconds:.1f} s: gRPC {server.grpc_url}  HTTP {server.http_url}  "
                  f"metrics {server.metrics_url}")
        done("serve", t, grpc=server.grpc_url, http=server.http_url)

        t = stage("chat", "6/7 chat: reasoning on, then off")
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

        t = stage("openai", "7/7 OpenAI-compatible API (the gateway in front of the same server)")
        summary["openai"] = _openai_demo(server, repo, out)
        done("openai", t, url=summary["openai"]["url"])
    out.print("[green]✓[/] server stopped cleanly")
    summary["chats"] = chats
    if as_json:
        print_json(summary)


def _post(url: str, body: dict) -> dict:
    """One POST with the standard library (what `curl` or any OpenAI client sends)."""
    import json
    import urllib.request

    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def _openai_demo(server, repo: Path, out) -> dict:
    from nemo_trt.model_facts import DEFAULT_MODEL
    from nemo_trt.serve.openai.runner import GatewayThread
    from nemo_trt.serve.openai.serving import GatewayConfig

    config = GatewayConfig(triton_url=server.grpc_url, tokenizer_dir=repo / "preprocessing" / "tokenizer")
    with GatewayThread(config) as gateway:
        url = f"{gateway.url}/v1/chat/completions"
        out.print(f"gateway at {gateway.url}/v1 (POST /chat/completions, /completions; GET /models, "
                  "/health/ready, /metrics)")
        question = DEMO_QUESTIONS["on"]
        out.print(f"[bold]POST /v1/chat/completions[/] {question!r}, chat_template_kwargs.thinking=true")
        chat = _post(url, {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": question}],
                           "max_tokens": 96, "temperature": 0, "chat_template_kwargs": {"thinking": True}})
        message = chat["choices"][0]["message"]
        out.print(f"  reasoning_content: [dim]{message.get('reasoning_content')!r}[/]")
        out.print(f"  content:           {message.get('content')!r}")
        out.print(f"  usage:             {chat['usage']}")
        out.print(f"[bold]POST /v1/chat/completions[/] {DEMO_TOOL_QUESTION!r} with tools=[get_weather]")
        tool = _post(url, {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": DEMO_TOOL_QUESTION}],
                           "tools": [DEMO_TOOL], "max_tokens": 64, "temperature": 0})
        choice = tool["choices"][0]
        calls = choice["message"].get("tool_calls") or []
        for call in calls:
            out.print(f"  tool_call: {call['function']['name']}({call['function']['arguments']})  id {call['id']}")
        if not calls:
            out.print(f"  content (no tool call parsed): {choice['message'].get('content')!r}")
        out.print(f"  finish_reason: {choice['finish_reason']}")
    return {"url": f"{gateway.url}/v1", "chat": {"reasoning_content": message.get("reasoning_content"),
                                                 "content": message.get("content"), "usage": chat["usage"]},
            "tool_call": {"finish_reason": choice["finish_reason"],
                          "tool_calls": [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                                         for c in calls],
                          "content": choice["message"].get("content")}}
