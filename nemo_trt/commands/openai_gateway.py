"""`nemo-trt openai`: the OpenAI-compatible API in front of a running Triton server."""
from __future__ import annotations

from pathlib import Path

import click

from nemo_trt.serve.openai.auth import ENV_VAR


def gateway_options(command):  # noqa: ANN001, ANN201 - click decorator
    """Options shared by `nemo-trt openai` and `nemo-trt serve --openai-port`."""
    for option in reversed([
        click.option("--api-key", envvar=ENV_VAR, default=None, metavar="KEY",
                     help=f"Require `Authorization: Bearer KEY` on /v1 endpoints [default: ${ENV_VAR}; none: "
                          "no auth]. Health probes and /metrics stay open."),
        click.option("--max-inflight", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Answer 429 beyond this many requests in flight (0 = no limit)."),
        click.option("--served-model-name", default=None, metavar="NAME",
                     help="The model id clients send and /v1/models lists [default: the serving model's name; "
                          "its aliases are accepted too]."),
        click.option("--request-timeout", type=click.FloatRange(min=1), default=None, metavar="SECONDS",
                     help="Give up on a generation after this long [default: no limit]."),
        click.option("--access-log/--no-access-log", default=False, show_default=True,
                     help="Log one line per HTTP request."),
        click.option("--detokenize/--no-detokenize", default=True, show_default=True,
                     help="With the served tokenizer at hand (--repo/--tokenizer, checked against the "
                          "repository's identity), call `ensemble_tokens` and make the text in the gateway: no "
                          "per-token Python step in Triton. --no-detokenize reads text_output from the ensemble."),
    ]):
        command = option(command)
    return command


@click.command("openai")
@click.option("--triton", "triton_url", default="127.0.0.1:8001", show_default=True, metavar="HOST:PORT",
              help="Triton's gRPC address (the gateway calls its `ensemble` model over gRPC streaming).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Use 0.0.0.0 only on a trusted network or with --api-key.")
@click.option("--port", type=click.IntRange(0, 65535), default=9000, show_default=True, help="0 = any free port.")
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              metavar="DIR", help="The served model repository, if it is on this machine: its tokenizer makes the "
                                  "text from token ids (--detokenize) and counts prompt and reasoning tokens.")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, metavar="DIR", help="A directory with the served tokenizer.json (instead of --repo).")
@click.option("--model", "triton_model", default="ensemble", show_default=True,
              help="The Triton model to call.")
@gateway_options
@click.option("--json", "as_json", is_flag=True, help="Print the endpoints as one JSON line once listening.")
def command(triton_url, host, port, repo, tokenizer_dir, triton_model, api_key, max_inflight, served_model_name,
            request_timeout, access_log, detokenize, as_json):
    """Serve the OpenAI API (chat, completions, models, health, metrics) against Triton.

    \b
    The gateway adds no Python hop inside Triton: it streams the `ensemble` model over
    gRPC. Reasoning comes back as `reasoning_content`, `<TOOLCALL>` output as OpenAI
    tool calls (streamed too), `max_thinking_tokens` caps the thought. Ctrl-C stops it.

    \b
    Examples:
      nemo-trt openai --triton 127.0.0.1:8001
      nemo-trt openai --triton triton:8001 --host 0.0.0.0 --port 9000 --api-key "$KEY" --max-inflight 256
      NEMO_TRT_API_KEY=secret nemo-trt openai --repo /deploy/super49b/repository --json
      curl -s 127.0.0.1:9000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "llama-3.3-nemotron-super-49b-v1", "messages": [{"role": "user", "content": "Hi"}]}'
    """
    from nemo_trt.console import err_console, print_json
    from nemo_trt.serve.client import normalize_url
    from nemo_trt.serve.openai.runner import run_foreground
    from nemo_trt.serve.openai.serving import GatewayConfig

    config = GatewayConfig(
        triton_url=normalize_url(triton_url, "grpc"), model=triton_model, served_model_name=served_model_name,
        api_key=api_key or None, max_inflight=max_inflight, tokenizer_dir=resolve_tokenizer(repo, tokenizer_dir),
        request_timeout=request_timeout, detokenize=detokenize)

    def ready(url: str) -> None:
        endpoints = {"openai": f"{url}/v1", "triton": config.triton_url, "auth": bool(config.api_key),
                     "health": f"{url}/v1/health/ready", "metrics": f"{url}/metrics"}
        if as_json:
            print_json(endpoints)
        else:
            err_console.print(f"[bold green]OpenAI API ready[/] at {url}/v1 (Triton {config.triton_url}"
                              f"{', bearer key required' if config.api_key else ''}); Ctrl-C stops it")

    run_foreground(config, host, port, log_level="warning" if as_json else "info", access_log=access_log,
                   on_ready=ready)


def resolve_tokenizer(repo: Path | None, tokenizer_dir: Path | None) -> Path | None:
    from nemo_trt.errors import NemoTrtError

    if tokenizer_dir is not None:
        if not (tokenizer_dir / "tokenizer.json").is_file():
            raise NemoTrtError(f"{tokenizer_dir} has no tokenizer.json", "point --tokenizer at the served tokenizer")
        return tokenizer_dir
    if repo is not None:
        candidate = repo / "preprocessing" / "tokenizer"
        if not (candidate / "tokenizer.json").is_file():
            raise NemoTrtError(f"{repo} has no preprocessing/tokenizer/tokenizer.json: not a nemo-trt repository",
                               "pass the repository written by `nemo-trt repo`/`nemo-trt build`, or --tokenizer")
        return candidate
    return None
