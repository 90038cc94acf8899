"""`nemo-trt`: one command line for build, serve and test.

Each subcommand lives in nemo_trt/commands/<name>.py and is imported only when
used, so `nemo-trt --help` stays fast and a missing optional dependency of one
command never breaks the others.
"""
from __future__ import annotations

import importlib
import sys

import click

from nemo_trt import __version__
from nemo_trt.errors import NemoTrtError

# name -> (module, one-line help); order is the order shown in --help
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("nemo_trt.commands.demo", "Run the whole chain on the tiny model: make, convert, serve, chat."),
    "inspect": ("nemo_trt.commands.inspect", "Show a model's architecture, parameters and bytes."),
    "profiles": ("nemo_trt.commands.profiles", "List the GPU profiles (or detect the local GPUs)."),
    "plan": ("nemo_trt.commands.plan", "Plan a build for a GPU profile: memory per rank, KV cache, settings."),
    "make-tiny": ("nemo_trt.commands.make_tiny", "Write (and train) the tiny DeciLM fixture checkpoint."),
    "convert": ("nemo_trt.commands.convert", "Convert an HF checkpoint to a TensorRT-LLM checkpoint (BF16/FP8)."),
    "verify": ("nemo_trt.commands.verify", "Check a converted checkpoint against its HF source, tensor by tensor."),
    "build": ("nemo_trt.commands.build", "One command from HF checkpoint to engines and model repository."),
    "repo": ("nemo_trt.commands.repo", "Write a Triton model repository (TensorRT-LLM or CPU reference backend)."),
    "serve": ("nemo_trt.commands.serve", "Start tritonserver on a model repository (+ the OpenAI API)."),
    "openai": ("nemo_trt.commands.openai_gateway", "Serve the OpenAI-compatible API in front of a running Triton."),
    "chat": ("nemo_trt.commands.chat", "Send one chat prompt to a running server and stream the answer."),
    "regress": ("nemo_trt.commands.regress", "Record and check golden outputs against a running server."),
    "eval": ("nemo_trt.commands.eval", "Accuracy (pass@1) on a benchmark vs the model card or a baseline run."),
    "deploy": ("nemo_trt.commands.deploy", "Render Kubernetes manifests for a built WORKDIR (replicas, autoscaling, "
               "multi-node)."),
    "selftest": ("nemo_trt.commands.selftest", "GPU acceptance: real trtllm-build + backend vs the CPU golden."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module = importlib.import_module(COMMANDS[name][0])
        return module.command

    def format_commands(self, ctx, formatter):
        rows = [(name, help_) for name, (_, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="nemo-trt")
def cli():
    """Llama-3.3-Nemotron-Super-49B-v1: HF checkpoint -> TensorRT-LLM engines -> Triton.

    \b
    Examples:
      nemo-trt demo                                  # whole chain on a tiny model, CPU only
      nemo-trt plan --gpu h100x2 --json              # will it fit, and how to build it
      nemo-trt build --gpu h100x2 --checkpoint /models/super49b --output /deploy/super49b
      nemo-trt serve --repo /deploy/super49b/repository --openai-port 9000
      nemo-trt chat "Why is the sky blue?" --reasoning on
    """


def main(argv=None) -> int:
    from nemo_trt.console import report_error

    try:
        cli.main(args=argv, prog_name="nemo-trt", standalone_mode=False)
    except NemoTrtError as exc:
        report_error(exc)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
