"""`nemo-trt convert`: HF checkpoint -> TensorRT-LLM checkpoint (config.json + rank files + manifest)."""
from __future__ import annotations

import click


@click.command("convert")
@click.option("--checkpoint", required=True, type=click.Path(file_okay=False),
              help="HF checkpoint directory (DeciLM or Llama); with --dry-run a built-in model name also works.")
@click.option("--output", required=True, type=click.Path(), help="Directory to write (created atomically).")
@click.option("--gpu", "gpu", default=None, metavar="PROFILE|auto",
              help="Take tp/pp/precision/KV dtype from a GPU profile's plan (refuses FP8 where the GPU lacks it).")
@click.option("--tp", type=int, default=None, help="Tensor-parallel size (instead of --gpu).")
@click.option("--pp", type=int, default=None, help="Pipeline-parallel size (default 1, or the profile's).")
@click.option("--precision", type=click.Choice(["bf16", "fp8"]), default=None,
              help="Weights: bf16 (exact copy) or fp8 (per-tensor E4M3; default bf16, or the profile's).")
@click.option("--kv-cache-dtype", type=click.Choice(["bf16", "fp8"]), default=None,
              help="KV cache dtype (fp8 writes kv_cache_scaling_factor; default bf16, or the profile's).")
@click.option("--workers", type=int, default=1, show_default=True, help="Processes writing rank files in parallel.")
@click.option("--force", is_flag=True, help="Replace an existing output made from other inputs.")
@click.option("--calib-prompts", type=click.Path(dir_okay=False, exists=True), default=None,
              help="FP8 calibration prompts: one per line, or JSONL with a prompt/text field (default: built-in set).")
@click.option("--calibrator", type=click.Choice(["reference", "modelopt"]), default="reference", show_default=True,
              help="FP8 calibration engine: the built-in reference model, or NVIDIA ModelOpt (if installed).")
@click.option("--calib-method", type=click.Choice(["layerwise", "whole"]), default="layerwise", show_default=True,
              help="FP8 calibration: one decoder layer at a time from the checkpoint (bounded memory), or the "
                   "whole model in memory (the check: 2x the checkpoint in RAM on CPU).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where FP8 calibration runs (conversion itself is CPU streaming).")
@click.option("--dry-run", is_flag=True, help="Show the layout, files and the calibration stage (prompts, tokens, "
                                              "memory and time per device); read no weights, write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(checkpoint, output, gpu, tp, pp, precision, kv_cache_dtype, workers, force, calib_prompts, calibrator,
            calib_method, device, dry_run, as_json):
    """Convert an HF checkpoint to a TensorRT-LLM checkpoint for trtllm-build.

    Streams one tensor at a time (memory stays near the largest tensor), writes
    config.json, rank{R}.safetensors per GPU and manifest.json (source
    fingerprint, plan, sha256 of every file) into a temporary sibling and renames
    it into place. Same inputs again: "up to date", nothing is rewritten.

    FP8 from a BF16 checkpoint calibrates activation (and KV) scales with the
    reference model on --calib-prompts, one decoder layer at a time (memory: one
    layer plus activations, ~2 GB for Super-49B on CPU; one layer on the GPU with
    --device cuda). Ranges are cached ($NEMO_TRT_CACHE/calibration), so a rerun
    after a failed conversion does not calibrate again. A calibration that would not
    fit this machine's memory is refused before anything is loaded, with the
    estimate and the other routes. A ModelOpt FP8 checkpoint (hf_quant_config.json)
    is converted directly. Embedding and lm_head stay BF16. --calibrator modelopt
    measures the same ranges with NVIDIA ModelOpt's FP8_DEFAULT_CFG (+ FP8_KV_CFG)
    quantizers instead of nemo-trt's hooks (K after RoPE measured, not bounded);
    weight scales are identical either way. It needs `pip install nvidia-modelopt`.

    \b
    Examples:
      nemo-trt convert --checkpoint /models/super49b --output /ckpt/super49b-tp2 --tp 2
      nemo-trt convert --checkpoint /models/super49b --output /ckpt/h100x2 --gpu h100x2
      nemo-trt convert --checkpoint /models/super49b --output /ckpt/fp8 --tp 2 --precision fp8 \\
          --kv-cache-dtype fp8 --calib-prompts prompts.txt --device cuda
      nemo-trt convert --checkpoint /models/super49b-FP8 --output /ckpt/fp8 --tp 2 --precision fp8
      nemo-trt convert --checkpoint ./tiny --output ./tiny-tp4-pp2 --tp 4 --pp 2 --workers 2 --json
      nemo-trt convert --checkpoint llama-3.3-nemotron-super-49b-v1 --output /ckpt/x --gpu h100x2 --dry-run
    """
    from nemo_trt.build.convert import convert_checkpoint
    from nemo_trt.console import console, print_json
    from nemo_trt.errors import NemoTrtError

    if gpu is None and tp is None:
        raise NemoTrtError("say how to shard the model", "pass --gpu PROFILE, or --tp N [--pp M]")
    gpus: tuple[str, ...] = ()
    gpu_memory = None
    if gpu is not None:
        from nemo_trt.build.gpu_detect import resolve_gpu_profile
        from nemo_trt.build.planner import make_plan
        from nemo_trt.build.spec import ModelSpec
        from nemo_trt.model_facts import resolve_model

        # Only the layout (tp, pp, precision, KV dtype) matters here; the typical request lengths feed
        # the planner's concurrency estimate, so keep them minimal (small models have short contexts).
        profile = resolve_gpu_profile(gpu)
        plan = make_plan(ModelSpec.from_path(resolve_model(checkpoint) if dry_run else checkpoint), profile,
                         precision=precision, tp=tp, pp=pp, input_len=1, output_len=1)
        tp, pp, precision = plan.tp, plan.pp, plan.precision
        kv_cache_dtype = kv_cache_dtype or plan.kv_cache_dtype
        gpus, gpu_memory = (profile.gpu.family,), profile.gpu.memory_bytes
    if dry_run:
        from nemo_trt.build.convert.api import describe_conversion

        info = describe_conversion(checkpoint, output, tp=tp, pp=pp or 1, precision=precision or "bf16",
                                   kv_cache_dtype=kv_cache_dtype, calib_prompts=calib_prompts, device=device,
                                   calibrator=calibrator, calib_method=calib_method, gpus=gpus,
                                   gpu_memory_bytes=gpu_memory)
        if as_json:
            print_json(info)
        else:
            _render_dry_run(info, console)
        return
    result = convert_checkpoint(checkpoint, output, tp=tp, pp=pp or 1, precision=precision or "bf16",
                                kv_cache_dtype=kv_cache_dtype, workers=workers, force=force,
                                calib_prompts=calib_prompts, device=device, progress=not as_json,
                                calibrator=calibrator, calib_method=calib_method)
    if as_json:
        print_json(result.to_dict())
    elif result.up_to_date:
        console.print(f"{result.output}: up to date (same source, same plan) — nothing to do")
    else:
        gb = result.bytes_written / 1e9
        console.print(f"wrote {result.output}: tp={result.tp} pp={result.pp} {result.precision} "
                      f"(KV {result.kv_cache_dtype}), {len(result.files) - 1} rank files, {gb:.2f} GB "
                      f"in {result.seconds:.1f}s")
        if result.calibration:
            c = result.calibration
            stats = c.get("stats") or {}
            how = ("reused cached ranges" if stats.get("cached") else
                   f"{stats.get('seconds', 0):.1f}s, {stats.get('tokens_per_s', 0):,.0f} tokens/s")
            console.print(f"calibrated with {c.get('calibrator')} ({c.get('method', 'whole')}) on {c.get('prompts')} "
                          f"prompts ({c.get('tokens')} tokens, {c.get('device')}; {how})")


def _render_dry_run(info: dict, console) -> None:
    from nemo_trt.build.calibration_plan import CalibrationPlan
    from nemo_trt.build.plan_report import render_calibration

    console.print(f"[bold]convert (dry run; nothing is read or written)[/]: {info['checkpoint']} -> {info['output']}",
                  soft_wrap=True)
    ranks = len(info["writes"]) - 2  # config.json and manifest.json besides the rank files
    console.print(f"tp {info['tp']} x pp {info['pp']}, {info['precision']} (KV {info['kv_cache_dtype']}, "
                  f"activations {info['dtype']}): {info['bytes'] / 1e9:.2f} GB in {ranks} rank file(s)")
    for path in info["writes"]:
        console.print(f"  writes {path}", soft_wrap=True)
    render_calibration(CalibrationPlan.model_validate(info["calibration"]), console)
    console.print(f"a real run on this machine: {info['real_run_here']}", soft_wrap=True)
