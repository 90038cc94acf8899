"""`nemo-trt verify`: re-read a converted checkpoint and compare it with its HF source."""
from __future__ import annotations

import click


@click.command("verify")
@click.option("--checkpoint", required=True, type=click.Path(file_okay=False), help="The HF source checkpoint.")
@click.option("--converted", required=True, type=click.Path(file_okay=False), help="The nemo-trt convert output.")
@click.option("--no-logits", is_flag=True, help="Skip the reference-model logit comparison.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def command(checkpoint, converted, no_logits, as_json):
    """Check a converted TensorRT-LLM checkpoint against its HF source.

    Verifies the manifest hashes, config.json (layer_configs, mapping,
    quantization), the names/shapes of every rank file, and every weight after
    merging TP ranks and PP stages, unfusing qkv and dequantizing FP8: exact for
    BF16, relative error <= 1/16 for FP8 (worst tensors listed). Small models
    also compare reference-model logits from both sides. Exit 1 on any mismatch.

    \b
    Examples:
      nemo-trt verify --checkpoint /models/super49b --converted /ckpt/super49b-tp2 --no-logits
      nemo-trt verify --checkpoint ./tiny --converted ./tiny-tp4-pp2 --json
    """
    from nemo_trt.build.verify import verify_checkpoint
    from nemo_trt.console import console, print_json
    from nemo_trt.errors import NemoTrtError

    report = verify_checkpoint(checkpoint, converted, logits=not no_logits)
    if as_json:
        print_json(report.to_dict())
    else:
        status = "[bold green]OK[/]" if report.ok else "[bold red]MISMATCH[/]"
        console.print(f"{status} {converted}: tp={report.tp} pp={report.pp} {report.precision}, "
                      f"{report.tensors_checked} tensors, {report.files_hashed} files hashed")
        for w in report.worst:
            console.print(f"  fp8 {w.name}: relative error {w.rel_error:.4f}, max abs {w.max_abs_error:.3g}")
        lg = report.logits or {}
        if "skipped" in lg:
            console.print(f"  logits: skipped ({lg['skipped']})")
        elif lg:
            console.print(f"  logits over {lg['tokens']} tokens: max abs diff {lg['max_abs_diff']:.3g}, "
                          f"top-1 agreement {lg['top1_agreement']:.3f}, min cosine {lg['min_cosine']:.4f}")
        for problem in report.problems:
            console.print(f"  [red]✗[/] {problem}")
    if not report.ok:
        raise NemoTrtError(f"{converted} does not match {checkpoint} ({len(report.problems)} problem(s))",
                           "reconvert with nemo-trt convert --force", exit_code=1)
