"""`nemo-trt serve`: start tritonserver on a model repository and keep it running."""
from __future__ import annotations

import signal
import sys

import click
from rich.markup import escape

from nemo_trt.commands.openai_gateway import gateway_options
from nemo_trt.console import console, err_console, print_json


@click.command("serve")
@click.option("--repo", required=True, type=click.Path(exists=True, file_okay=False), metavar="DIR",
              help="Triton model repository (from `nemo-trt build` or `nemo-trt repo`).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address for HTTP, gRPC and metrics. Use 0.0.0.0 only on a trusted network.")
@click.option("--http-port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 = any free port.")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=8001, show_default=True, help="0 = any free port.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=8002, show_default=True,
              help="0 = any free port.")
@click.option("--log-verbose", type=click.IntRange(0, 6), default=0, show_default=True,
              help="tritonserver --log-verbose level.")
@click.option("--model-control-mode", type=click.Choice(["none", "poll", "explicit"]), default="none",
              show_default=True, help="tritonserver --model-control-mode.")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="Where the server log goes; '-' = standard output (containers) [default: a temporary file, "
                   "printed at start].")
@click.option("--mpi-hostfile", type=click.Path(exists=True, dir_okay=False), default=None, hidden=True,
              help="Run the ranks on the hosts of this MPI hostfile (written by `nemo-trt deploy lws-leader`).")
@click.option("--tritonserver", "tritonserver", type=click.Path(exists=True, dir_okay=False), default=None,
              envvar="TRITONSERVER", help="tritonserver binary [default: $TRITONSERVER, PATH, "
              "/opt/tritonserver/bin, the nvidia-pytriton copy].")
@click.option("--startup-timeout", type=click.FloatRange(min=1), default=600.0, show_default=True,
              metavar="SECONDS", help="Give up if the server is not ready by then (49B engines load for minutes).")
@click.option("--http-backpressure/--no-http-backpressure", default=True, show_default=True,
              help="Preload the library that makes tritonserver's HTTP frontend hold a response until its worker "
                   "has room instead of losing it (a Triton defect that hangs HTTP clients under load; README, "
                   "serving). Built with the system C compiler on first use.")
@click.option("--openai-port", type=click.IntRange(0, 65535), default=None, metavar="PORT",
              help="Also serve the OpenAI-compatible API on this port (on --host; 0 = any free port), "
                   "once Triton is ready. Off by default.")
@gateway_options
@click.option("--json", "as_json", is_flag=True, help="Print the endpoints as one JSON line once ready.")
def command(repo, host, http_port, grpc_port, metrics_port, log_verbose, model_control_mode, log_file, mpi_hostfile,
            tritonserver, startup_timeout, http_backpressure, openai_port, api_key, max_inflight, served_model_name,
            request_timeout, access_log, detokenize, as_json):
    """Start Triton on a model repository; Ctrl-C stops it cleanly.

    \b
    Works with the NGC Triton TensorRT-LLM container (engines; one process per rank under
    mpirun for TP/PP > 1) and, for the CPU reference backend, with the tritonserver
    bundled in nvidia-pytriton. Refuses engines built by another TensorRT-LLM version.
    Binds 127.0.0.1 unless --host says otherwise.

    \b
    Examples:
      nemo-trt serve --repo /deploy/super49b/repository
      nemo-trt serve --repo ./tiny-repo --http-port 0 --grpc-port 0 --metrics-port 0 --json
      nemo-trt serve --repo ./repo --host 0.0.0.0 --log-verbose 1 --log-file triton.log
      nemo-trt serve --repo /deploy/super49b/repository --openai-port 9000      # + OpenAI API
      NEMO_TRT_API_KEY=secret nemo-trt serve --repo ./repo --host 0.0.0.0 --openai-port 9000
    """
    from nemo_trt.serve.launcher import TritonServer

    server = TritonServer(repo, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                          model_control_mode=model_control_mode, log_verbose=log_verbose, log_file=log_file,
                          tritonserver=tritonserver, startup_timeout=startup_timeout, mpi_hostfile=mpi_hostfile,
                          http_backpressure=http_backpressure)

    # SIGTERM (docker stop, systemd) stops the server like Ctrl-C does. SIGINT is set
    # explicitly too: a shell starts background jobs with SIGINT ignored.
    def _terminate(signum, frame):
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGINT)}
    gateway = None
    try:
        if as_json:
            server.start()
        else:
            with err_console.status(f"starting tritonserver on {repo} …"):
                server.start()
        endpoints = {"http": server.http_url, "grpc": server.grpc_url, "metrics": server.metrics_url,
                     "log": str(server.log_file), "startup_seconds": round(server.startup_seconds or 0, 2),
                     "world_size": server.world_size, "pid": server.pid,
                     "http_backpressure": http_backpressure and server.http_backpressure_missing is None}
        if server.http_backpressure_missing:
            err_console.print(f"[yellow]warning:[/] serving without HTTP backpressure: "
                              f"{escape(server.http_backpressure_missing)}")
        if openai_port is not None:
            gateway = _start_gateway(server, repo, host, openai_port, api_key, max_inflight, served_model_name,
                                     request_timeout, access_log, detokenize)
            endpoints["openai"] = f"{gateway.url}/v1"
        if as_json:
            print_json(endpoints)
        else:
            _print_endpoints(server, endpoints)
        code = server.wait()
        raise SystemExit(_died(server, code))
    except KeyboardInterrupt:
        if gateway is not None:
            gateway.stop()
        err_console.print("stopping tritonserver …")
        stopped = server.stop()
        err_console.print(f"stopped (exit code {stopped})")
    finally:
        if gateway is not None:
            gateway.stop()
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _start_gateway(server, repo, host, port, api_key, max_inflight, served_model_name, request_timeout,
                   access_log, detokenize=True):
    from pathlib import Path

    from nemo_trt.commands.openai_gateway import resolve_tokenizer
    from nemo_trt.serve.openai.runner import GatewayThread
    from nemo_trt.serve.openai.serving import GatewayConfig

    config = GatewayConfig(triton_url=server.grpc_url, served_model_name=served_model_name, api_key=api_key or None,
                           max_inflight=max_inflight, tokenizer_dir=resolve_tokenizer(Path(repo), None),
                           request_timeout=request_timeout, detokenize=detokenize)
    return GatewayThread(config, host=host, port=port, access_log=access_log).start()


def _print_endpoints(server, endpoints) -> None:
    console.print(f"[bold green]Triton ready[/] in {endpoints['startup_seconds']} s "
                  f"({endpoints['world_size']} rank{'s' if endpoints['world_size'] > 1 else ''})")
    console.print(f"  HTTP     {endpoints['http']}")
    console.print(f"  gRPC     {endpoints['grpc']}")
    console.print(f"  metrics  {endpoints['metrics']}")
    console.print(f"  log      {endpoints['log']}")
    if "openai" in endpoints:
        console.print(f"  OpenAI   {endpoints['openai']}  (health /v1/health/ready, metrics /metrics)")
    console.print("\nTry it:")
    console.print(f"  nemo-trt chat \"Why is the sky blue?\" --url {server.grpc_url}", soft_wrap=True)
    body = '{"text_input": "Why is the sky blue?", "max_tokens": 64, "stream": true}'
    console.print(f"  curl -N -X POST {server.http_url}/v2/models/ensemble/generate_stream -d '{body}'",
                  soft_wrap=True, markup=False)
    if "openai" in endpoints:
        body = ('{"model": "llama-3.3-nemotron-super-49b-v1", "messages": [{"role": "user", '
                '"content": "Why is the sky blue?"}], "max_tokens": 64}')
        console.print(f"  curl -s {endpoints['openai']}/chat/completions -H 'Content-Type: application/json' "
                      f"-d '{body}'", soft_wrap=True, markup=False)
    console.print("\nCtrl-C stops the server.")


def _died(server, code: int) -> int:
    err_console.print(f"[bold red]tritonserver exited[/] with code {code}; last log lines:")
    err_console.print(server.log_tail(), markup=False, highlight=False)
    sys.stderr.flush()
    return code or 1
