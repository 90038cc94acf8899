"""`nemo-trt chat`: one prompt to a running server; reasoning shown apart from the answer."""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import click

from nemo_trt.console import console, err_console, print_json

if TYPE_CHECKING:  # pragma: no cover
    from nemo_trt.serve.client import Protocol


@click.command("chat")
@click.argument("prompt")
@click.option("--reasoning", type=click.Choice(["on", "off"]), default=None,
              help="System prompt `detailed thinking on|off` [default: the model's default, on].")
@click.option("--system", default=None, metavar="TEXT",
              help="Extra instructions; they go into the user turn (the model wants only the reasoning "
                   "switch in the system turn).")
@click.option("--raw", is_flag=True, help="Send PROMPT as text_input, without the chat template.")
@click.option("--url", default=None, metavar="HOST:PORT",
              help="Triton endpoint [default: 127.0.0.1:8001 for grpc, 127.0.0.1:8000 for http].")
@click.option("--protocol", type=click.Choice(["grpc", "http"]), default="grpc", show_default=True,
              help="gRPC stream, or the HTTP generate_stream extension.")
@click.option("--no-stream", is_flag=True, help="Ask for one response with the whole answer.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0.0), default=None,
              help="[default: the model's per-mode default: 0.6 with reasoning on, greedy off]")
@click.option("--top-p", type=click.FloatRange(min=0.0, max=1.0, min_open=True), default=None)
@click.option("--top-k", type=click.IntRange(min=0), default=None)
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed for reproducible sampling.")
@click.option("--stop", "stop_words", multiple=True, metavar="TEXT", help="Stop word (repeatable).")
@click.option("--model", default="ensemble", show_default=True, help="Triton model to call.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=300.0, show_default=True, metavar="SECONDS")
@click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON (no live output).")
def command(prompt, reasoning, system, raw, url, protocol, no_stream, max_tokens, temperature, top_p, top_k, seed,
            stop_words, model, timeout, as_json):
    """Send PROMPT to a running nemo-trt server and stream the answer.

    \b
    The reasoning (the text inside <think>…</think>) is printed dimmed, apart from the
    answer; token counts and time to first token go to stderr at the end.

    \b
    Examples:
      nemo-trt chat "Why is the sky blue?"
      nemo-trt chat "Solve 12*17" --reasoning on --max-tokens 1024
      nemo-trt chat "Hello" --reasoning off --protocol http --url 127.0.0.1:8000
      nemo-trt chat "Hello" --no-stream --json
    """
    from nemo_trt.serve.client import GenerateRequest, generate

    if raw:
        inputs = {"prompt": prompt if not system else f"{system}\n\n{prompt}"}
    else:
        content = prompt if not system else f"{system}\n\n{prompt}"
        inputs = {"messages": [{"role": "user", "content": content}]}
    request = GenerateRequest(**inputs, reasoning=reasoning, max_tokens=max_tokens, temperature=temperature,
                              top_p=top_p, top_k=top_k, seed=seed, stop_words=list(stop_words), model=model)

    if as_json:
        result = generate(url, request, protocol=protocol, stream=not no_stream, timeout=timeout)
        print_json(result.to_dict())
        return

    if no_stream:
        result = generate(url, request, protocol=protocol, stream=False, timeout=timeout)
        _show(result.reasoning, result.answer, result.text)
        _stats(result)
    else:
        stream_to_console(url, request, protocol=protocol, timeout=timeout)


def stream_to_console(url, request, *, protocol: Protocol = "grpc", timeout: float = 300.0):
    """Stream one request, printing reasoning dimmed and the answer plainly as they arrive; returns the Result."""
    from nemo_trt.serve.client import collect, stream_generate

    printed = {"any": False, "in_reasoning": False}

    def live(deltas):
        for delta in deltas:
            if delta.reasoning:
                console.print(delta.reasoning, style="dim", end="", markup=False, highlight=False)
                printed.update(any=True, in_reasoning=True)
            if delta.answer:
                if printed["in_reasoning"]:
                    console.print()
                    printed["in_reasoning"] = False
                console.print(delta.answer, end="", markup=False, highlight=False)
                printed["any"] = True
            yield delta

    with contextlib.closing(stream_generate(url, request, protocol=protocol, timeout=timeout)) as deltas:
        result = collect(live(deltas), request)
    if not printed["any"] and result.text:
        console.print(result.text, end="", markup=False, highlight=False)
    console.print()
    _stats(result)
    return result


def _show(reasoning: str, answer: str, text: str) -> None:
    if reasoning:
        console.print(reasoning.strip("\n"), style="dim", markup=False, highlight=False)
    if answer or not reasoning:
        console.print(answer if (answer or reasoning) else text, markup=False, highlight=False)


def _stats(result) -> None:
    parts = []
    if result.num_output_tokens is not None:
        parts.append(f"{result.num_output_tokens} tokens")
    if result.ttft is not None:
        parts.append(f"TTFT {result.ttft * 1000:.0f} ms")
    if result.itl is not None:
        parts.append(f"ITL {result.itl * 1000:.1f} ms")
    parts.append(f"total {result.total_time:.2f} s")
    if result.finish_reason:
        parts.append(f"finish {result.finish_reason}")
    err_console.print(" · ".join(parts), style="dim")
