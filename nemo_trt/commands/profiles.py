"""`nemo-trt profiles`: the GPU profiles, or which one matches the local GPUs."""
from __future__ import annotations

import click


@click.command("profiles")
@click.option("--detect", is_flag=True, help="Detect the local NVIDIA GPUs and show the matching profile.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def command(detect, as_json):
    """List the GPU profiles (hardware, precisions, layouts) or detect the local GPUs.

    \b
    Examples:
      nemo-trt profiles                 # table of all profiles
      nemo-trt profiles --json          # full profiles, with every reason
      nemo-trt profiles --detect        # which profile fits this machine (needs an NVIDIA driver)
    """
    from rich.table import Table

    from nemo_trt.build import gpu_detect
    from nemo_trt.build.profiles import list_profiles
    from nemo_trt.console import console, print_json

    if detect:
        gpus = gpu_detect.detect_gpus()
        profile = gpu_detect.match_profile(gpus)
        if as_json:
            print_json({"gpus": [g.__dict__ for g in gpus], "profile": profile.name})
        else:
            console.print(f"detected: {gpu_detect.describe(gpus)}")
            console.print(f"matching profile: [bold]{profile.name}[/] ({profile.summary})")
            console.print(f"next: nemo-trt plan --gpu {profile.name}")
        return

    profiles = list_profiles()
    if as_json:
        print_json([p.model_dump(mode="json") for p in profiles])
        return
    table = Table(title="GPU profiles", title_justify="left")
    for col in ("name", "GPUs", "memory/GPU", "SM", "FP8", "precisions", "TP x PP (throughput / latency)"):
        table.add_column(col, overflow="fold")
    for p in profiles:
        layouts = "; ".join(
            f"{prec}: {p.layout(prec, 'throughput').tp}x{p.layout(prec, 'throughput').pp} / "
            f"{p.layout(prec, 'latency').tp}x{p.layout(prec, 'latency').pp}" for prec in p.precisions)
        precs = ", ".join(f"{x}*" if x == p.recommended_precision else x for x in p.precisions)
        table.add_row(p.name, f"{p.gpu.count}x {p.gpu.name}", f"{p.gpu.memory_mib:,} MiB", p.gpu.compute_capability,
                      "yes" if p.gpu.fp8 else "no", precs, layouts)
    console.print(table)
    for p in profiles:
        console.print(f"[bold]{p.name}[/]: {p.summary}")
    console.print("[dim]* recommended precision. Details and reasons: nemo-trt plan --gpu NAME[/]")
