"""`nemo-trt plan`: will the model fit a GPU profile, and how should it be built."""
from __future__ import annotations

import click

from nemo_trt.build.plan_report import render_plan  # noqa: F401  (re-exported for demo / build --dry-run)


@click.command("plan")
@click.option("--gpu", "gpu", required=True, metavar="PROFILE|auto",
              help="GPU profile (h200x1, h100x2, a100x4, a100x8, a profile YAML) or 'auto' to detect local GPUs.")
@click.option("--precision", type=click.Choice(["bf16", "fp8"]), default=None,
              help="Weight precision (default: the profile's recommended one).")
@click.option("--variant", type=click.Choice(["throughput", "latency"]), default="throughput", show_default=True,
              help="Which of the profile's layouts to use.")
@click.option("--model", "model", default=None, metavar="NAME_OR_PATH",
              help="Built-in model name or HF checkpoint directory (default: Super-49B).")
@click.option("--max-seq-len", type=int, default=None, help="Override max_seq_len (prompt + output tokens).")
@click.option("--max-batch-size", type=int, default=None, help="Override max_batch_size.")
@click.option("--max-input-len", type=int, default=None, help="Override max_input_len.")
@click.option("--max-num-tokens", type=int, default=None, help="Override max_num_tokens (tokens per iteration).")
@click.option("--tp", type=int, default=None, help="Override tensor parallel size.")
@click.option("--pp", type=int, default=None, help="Override pipeline parallel size.")
@click.option("--input-len", "--isl", "input_len", type=int, default=2048, show_default=True,
              help="Typical prompt length in tokens (concurrency and capacity estimates).")
@click.option("--output-len", "--osl", "output_len", type=int, default=1024, show_default=True,
              help="Typical output length in tokens (concurrency and capacity estimates).")
@click.option("--gpus-per-node", type=click.IntRange(min=1), default=None, metavar="N",
              help="GPUs of one node: a layout larger than that is split TP inside a node x PP across nodes.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None, metavar="REQ/S",
              help="Capacity planning: the request rate to serve; prints the replicas it needs.")
@click.option("--ttft-slo", type=click.FloatRange(min=0, min_open=True), default=None, metavar="MS",
              help="Capacity planning: time-to-first-token objective (p90) in milliseconds.")
@click.option("--measured", "measured", multiple=True, type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="What one replica sustained: genai-perf/AIPerf profile_export JSON or `nemo-trt regress check "
                   "--json` output (repeat for a sweep). Without it, an estimate from stated assumptions.")
@click.option("--utilization", type=click.FloatRange(0, 1, min_open=True), default=0.8, show_default=True,
              help="Capacity planning: share of a replica's throughput to plan for (burst and autoscaling headroom).")
@click.option("--calib-prompts", type=click.Path(dir_okay=False, exists=True), default=None,
              help="FP8 calibration prompts to plan for (default: the built-in set).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON (Plan.model_dump; `capacity` added "
              "with --rate).")
def command(gpu, precision, variant, model, max_seq_len, max_batch_size, max_input_len, max_num_tokens, tp, pp,
            input_len, output_len, gpus_per_node, rate, ttft_slo, measured, utilization, calib_prompts, as_json):
    """Plan a build: weights, activations and KV cache per rank, and the settings with reasons.

    FP8 from a BF16 checkpoint adds the calibration stage: prompts and tokens,
    and the memory and time of each route (layer by layer on CPU or GPU, or the
    whole model) per device.

    Fails (exit 2) with the reason and a fix when the build cannot work: FP8 on
    Ampere, weights that do not fit, a TP size that does not divide the heads,
    max_seq_len above the model's 131,072, or a KV cache too small for one
    max_seq_len sequence.

    \b
    Examples:
      nemo-trt plan --gpu h100x2                       # FP8, throughput layout
      nemo-trt plan --gpu h100x2 --precision bf16 --variant latency
      nemo-trt plan --gpu a100x4 --max-seq-len 131072 --json
      nemo-trt plan --gpu auto --input-len 512 --output-len 4096
      nemo-trt plan --gpu h200x1 --model /models/Llama-3_3-Nemotron-Super-49B-v1
      nemo-trt plan --gpu a100x8 --gpus-per-node 4                # 2 nodes: TP4 x PP2
      nemo-trt plan --gpu h100x2 --rate 20 --isl 2048 --osl 1024 --ttft-slo 2000
      nemo-trt plan --gpu h100x2 --rate 20 --isl 1000 --osl 500 --measured profile_export_genai_perf.json
    """
    from nemo_trt.build.calibration_plan import plan_calibration
    from nemo_trt.build.gpu_detect import resolve_gpu_profile
    from nemo_trt.build.layout import make_node_plan
    from nemo_trt.build.spec import ModelSpec
    from nemo_trt.console import console, print_json
    from nemo_trt.model_facts import DEFAULT_MODEL, resolve_model

    model_dir = resolve_model(model or DEFAULT_MODEL)
    spec = ModelSpec.from_path(model_dir)
    profile = resolve_gpu_profile(gpu)
    plan = make_node_plan(spec, profile, precision=precision, variant=variant, max_seq_len=max_seq_len,
                          max_batch_size=max_batch_size, max_input_len=max_input_len, max_num_tokens=max_num_tokens,
                          input_len=input_len, output_len=output_len, tp=tp, pp=pp, gpus_per_node=gpus_per_node)
    plan.calibration = plan_calibration(spec, model_dir, precision=plan.precision, kv_cache_dtype=plan.kv_cache_dtype,
                                        gpus=[profile.gpu.family], gpu_memory_bytes=profile.gpu.memory_bytes,
                                        calib_prompts=calib_prompts)
    capacity = None
    if rate is not None:
        from nemo_trt.build.capacity import plan_capacity, read_load_point

        capacity = plan_capacity(plan, profile.gpu.family, rate=rate, isl=input_len, osl=output_len,
                                 ttft_slo_ms=ttft_slo, measured=[read_load_point(f) for f in measured],
                                 utilization=utilization)
    elif measured or ttft_slo is not None:
        raise click.UsageError("--measured and --ttft-slo plan capacity: give the request rate with --rate")
    if as_json:
        data = plan.model_dump(mode="json")
        if capacity is not None:
            data["capacity"] = capacity.model_dump(mode="json")
        print_json(data)
        return
    render_plan(plan, console)
    if capacity is not None:
        from nemo_trt.build.plan_report import render_capacity

        render_capacity(capacity, console)
