"""Rich rendering of a `Plan` (shared by `nemo-trt plan`, `demo` and `build --dry-run`)."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from nemo_trt.build.calibration_plan import CalibrationPlan, duration
from nemo_trt.build.planner import BuildSettings, Plan


def _groups(plan: Plan) -> list[list]:
    """Consecutive ranks whose figures are identical (all TP ranks of a stage, normally)."""
    groups: list[tuple] = []
    for r in plan.ranks:
        key = (r.pp_rank, r.weight_bytes, r.activation_bytes, r.free_bytes_for_kv, r.kv_tokens)
        if groups and groups[-1][0] == key:
            groups[-1][1].append(r)
        else:
            groups.append((key, [r]))
    return [members for _, members in groups]


def render_plan(plan: Plan, console: Console, *, show_reasons: bool = True) -> None:
    console.print(
        f"[bold]{plan.model}[/] on [bold]{plan.profile}[/]: {plan.num_gpus}x {plan.gpu_name} "
        f"({plan.gpu_memory_mib:,} MiB, SM {plan.compute_capability})"
    )
    console.print(
        f"precision [bold]{plan.precision}[/] (KV cache {plan.kv_cache_dtype}), variant [bold]{plan.variant}[/], "
        f"TP {plan.tp} x PP {plan.pp} = {plan.world_size} GPU(s)"
    )
    if plan.nodes > 1:
        console.print(f"[bold]{plan.nodes} nodes[/] x {plan.gpus_per_node} GPUs: {plan.reasons.get('nodes', '')}")

    table = Table(title="Memory per GPU (ranks with identical figures grouped)", title_justify="left")
    for col in ("ranks", "layers", "attn layers", "weights GB", "act. GB", "KV pool GB", "KV B/ token"):
        table.add_column(col.replace(" ", "\n", 1), justify="right")
    table.add_column("KV\ntokens", justify="right", no_wrap=True)
    for group in _groups(plan):
        r = group[0]
        ranks = str(r.rank) if len(group) == 1 else f"{r.rank}-{group[-1].rank}"
        table.add_row(
            ranks, f"{r.layers[0]}-{r.layers[1]}", str(r.attention_layers),
            f"{r.weight_bytes / 1e9:.2f}", f"{r.activation_bytes / 1e9:.2f}", f"{r.free_bytes_for_kv / 1e9:.2f}",
            f"{r.kv_bytes_per_token:,}", f"{r.kv_tokens:,}",
        )
    console.print(table)
    console.print(
        f"KV cache: [bold]{plan.kv_tokens:,}[/] tokens per engine -> {plan.kv_limited_sequences} sequences of "
        f"{plan.input_len}+{plan.output_len} tokens; concurrency [bold]{plan.concurrent_sequences}[/] "
        f"(max_batch_size {plan.build.max_batch_size}); {plan.kv_tokens // plan.build.max_seq_len} full "
        f"max_seq_len ({plan.build.max_seq_len:,}-token) sequence(s) fit at once"
    )

    settings = Table(title="Build and runtime settings", title_justify="left")
    settings.add_column("setting")
    settings.add_column("value")
    if show_reasons:
        settings.add_column("why", overflow="fold")
    for key, why in (("precision", plan.reasons.get("precision", "")),
                     ("kv_cache_dtype", plan.reasons.get("kv_cache_dtype", "")),
                     ("tp", plan.reasons.get("tp", "")), ("pp", plan.reasons.get("pp", ""))):
        row = [key, str(getattr(plan, key))] + ([why] if show_reasons else [])
        settings.add_row(*row)
    for key in BuildSettings.model_fields:
        if key == "reasons":
            continue
        row = [key, str(getattr(plan.build, key))] + ([plan.build.reasons.get(key, "")] if show_reasons else [])
        settings.add_row(*row)
    console.print(settings)
    if plan.builder_overrides or plan.engine_implied:
        console.print(f"[bold]TensorRT-LLM builder[/] ({plan.architecture or 'architecture unknown'}): the settings "
                      "above are what the engine will have")
        for o in plan.builder_overrides:
            console.print(f"  {o['setting']}: {o['requested']} -> [bold]{o['effective']}[/] "
                          f"[dim]({o['rule']}: \"{o['log']}\")[/]", soft_wrap=True)
        for key, value in plan.engine_implied.items():
            console.print(f"  [dim]{key}: {value} (no flag; builder default)[/]", soft_wrap=True)
    console.print(f"[dim]{plan.activation_formula}[/]")
    if plan.calibration is not None:
        render_calibration(plan.calibration, console)
    for warning in plan.warnings:
        console.print(f"[yellow]warning:[/] {warning}")


def render_calibration(cal: CalibrationPlan, console: Console) -> None:
    """The FP8 calibration stage: prompts/tokens, memory and time per route and device."""
    if not cal.needed:
        console.print(f"calibration: none ({cal.why})")
        return
    console.print(f"[bold]FP8 calibration[/]: {cal.why}; {cal.prompts} prompts ({cal.prompt_source}), "
                  f"{cal.tokens:,} tokens (longest {cal.longest_prompt}; {cal.tokenization}); "
                  f"runs [bold]{cal.route} on {cal.device}[/]")
    table = Table(title="Calibration routes (estimates)", title_justify="left")
    for col in ("route", "device", "micro-batches", "RAM GB", "GPU GB", "TFLOP", "time"):
        table.add_column(col, justify="left" if col in ("route", "device", "time") else "right")
    for r in cal.routes:
        times = ", ".join(f"{duration(v)} ({k})" for k, v in r.seconds.items())
        table.add_row(r.route, f"{r.device} ({r.dtype})", str(r.micro_batches), f"{r.host_bytes / 1e9:.1f}",
                      f"{r.device_bytes / 1e9:.1f}" if r.device == "cuda" else "-", f"{r.tflop:,.1f}", times)
    console.print(table)
    for r in cal.routes:
        if r.note:
            console.print(f"  {r.route} on {r.device}: {r.note}")
    for line in cal.assumptions:
        console.print(f"[dim]assumes {line}[/]")


def render_capacity(cap, console: Console) -> None:
    """Replicas for a request rate (nemo_trt.build.capacity.Capacity), with its basis beside it."""
    slo = f" within a TTFT p90 of {cap.ttft_slo_ms:.0f} ms" if cap.ttft_slo_ms is not None else ""
    console.print(
        f"\n[bold]Capacity[/]: {cap.rate:g} req/s of {cap.isl}+{cap.osl} tokens{slo} -> "
        f"[bold]{cap.replicas} replica(s)[/] ({cap.basis}: {cap.per_replica_rps:.3f} req/s per replica at "
        f"{cap.utilization:.0%} utilization" + (f", TTFT ~{cap.ttft_ms:.0f} ms" if cap.ttft_ms is not None else "")
        + ")"
    )
    title = ("measured" if cap.basis == "measured"
             else "assumptions (an estimate: measure one replica and pass --measured)")
    console.print(f"[bold]{title}:[/]")
    for line in cap.assumptions:
        console.print(f"  - {line}", soft_wrap=True)
    for warning in cap.warnings:
        console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
