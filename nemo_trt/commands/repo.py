"""`nemo-trt repo`: write a Triton model repository for engines or the CPU reference backend."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("repo")
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path), metavar="REPO",
              help="Repository directory to write (written atomically; see --force).")
@click.option("--tokenizer", "tokenizer", required=True, type=click.Path(path_type=Path), metavar="DIR",
              help="Directory with the model's tokenizer.json (e.g. the HF checkpoint); copied into the repository.")
@click.option("--engine", "engine", type=click.Path(path_type=Path), default=None, metavar="ENGINE_DIR",
              help="TensorRT-LLM engine directory (rank*.engine + config.json): TensorRT-LLM C++ backend.")
@click.option("--reference", "reference", type=click.Path(path_type=Path), default=None, metavar="CONVERTED_DIR",
              help="Converted checkpoint (or HF checkpoint) for the CPU reference backend (no GPU needed).")
@click.option("--gpu", "gpu", default=None, metavar="PROFILE",
              help="Take limits and runtime settings from a plan for this GPU profile (must match the engine).")
@click.option("--precision", type=click.Choice(["bf16", "fp8"]), default=None,
              help="Precision of the plan (with --gpu; default: the profile's recommendation).")
@click.option("--model", "model", default=None, metavar="NAME_OR_PATH",
              help="Model the plan is for (with --gpu; default: Super-49B).")
@click.option("--reasoning", type=click.Choice(["on", "off"]), default="on", show_default=True,
              help="Reasoning mode for requests that do not choose one.")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="Instances (processes) of preprocessing (postprocessing keeps per-stream state: always one).")
@click.option("--force", is_flag=True, help="Replace an existing repository (only once the new one is complete).")
@click.option("--json", "as_json", is_flag=True, help="Print the repository manifest as JSON.")
def command(output, tokenizer, engine, reference, gpu, precision, model, reasoning, instances, force, as_json):
    """Write a self-contained Triton model repository: ensemble, preprocessing (chat
    template, defaults, checks), tensorrt_llm (TensorRT-LLM engines, or the CPU reference
    backend) and postprocessing (per-stream detokenization and reasoning split).

    Every template placeholder is filled and every config.pbtxt is validated with
    Triton's model-config protobuf. Tokenizer files are copied in, so the repository
    can be moved; engine and reference paths are stored as absolute paths.

    \b
    Examples:
      nemo-trt repo -o /deploy/repo --tokenizer /models/super49b --engine /deploy/engines
      nemo-trt repo -o /deploy/repo --tokenizer /models/super49b --engine /deploy/engines --gpu h100x2
      nemo-trt repo -o ./tiny-repo --tokenizer ./tiny-hf --reference ./tiny-trtllm --reasoning off
      nemo-trt repo -o ./tiny-repo --tokenizer ./tiny-hf --reference ./tiny-trtllm --force --json
    """
    from nemo_trt.console import console, print_json
    from nemo_trt.errors import NemoTrtError
    from nemo_trt.serve.repo_writer import read_repository_manifest, write_repository

    if (engine is None) == (reference is None):
        raise NemoTrtError("give exactly one of --engine or --reference",
                           "--engine ENGINE_DIR for TensorRT-LLM (GPU), --reference CONVERTED_DIR for the CPU backend")
    if gpu is None and (precision or model):
        raise NemoTrtError("--precision and --model describe a plan and need --gpu PROFILE",
                           "add --gpu PROFILE, or drop them to take the settings from the engine")
    plan = None
    if gpu is not None:
        from nemo_trt.build.gpu_detect import resolve_gpu_profile
        from nemo_trt.build.planner import make_plan
        from nemo_trt.build.spec import ModelSpec
        from nemo_trt.model_facts import DEFAULT_MODEL, resolve_model

        plan = make_plan(ModelSpec.from_path(resolve_model(model or DEFAULT_MODEL)), resolve_gpu_profile(gpu),
                         precision=precision)
    path = write_repository(output, tokenizer_dir=tokenizer, engine_dir=engine, reference_dir=reference, plan=plan,
                            reasoning=reasoning, instances=instances, force=force)
    manifest = read_repository_manifest(path)
    if as_json:
        print_json({"repository": str(path), **manifest})
        return
    limits = manifest["limits"]
    console.print(f"[bold green]wrote[/] {path}  ({manifest['backend']} backend)")
    console.print(f"  limits ({limits['source']}): max_batch_size {limits['max_batch_size']}, "
                  f"max_input_len {limits['max_input_len']}, max_seq_len {limits['max_seq_len']}, "
                  f"default max_tokens {limits['default_max_tokens']}")
    console.print(f"  reasoning default: {manifest['default_reasoning']}; models: {', '.join(manifest['models'])}")
    console.print(f"  serve it: nemo-trt serve --repo {path}")
