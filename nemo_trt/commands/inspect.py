"""`nemo-trt inspect`: a model's layer structure, parameters, bytes and KV cache."""
from __future__ import annotations

import click


def _kind(layer) -> tuple[str, str]:
    if layer.attention.value == "attention":
        attn = f"attention ({layer.num_kv_heads} KV heads)"
    else:
        attn = layer.attention.value
    ffn = f"mlp d_ff {layer.intermediate_size}" if layer.ffn.value == "mlp" else layer.ffn.value
    if layer.ffn_mult is not None and layer.ffn.value == "mlp":
        ffn += f" (ffn_mult {layer.ffn_mult:g})"
    return attn, ffn


@click.command("inspect")
@click.argument("model", required=False, metavar="PATH_OR_NAME")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def command(model, as_json):
    """Show a model's architecture (layer runs), parameters, bytes per precision and KV cache per token.

    PATH_OR_NAME is a built-in model name (default: llama-3.3-nemotron-super-49b-v1),
    a Hugging Face checkpoint directory or its config.json.

    \b
    Examples:
      nemo-trt inspect                                   # Super-49B
      nemo-trt inspect llama-3.3-nemotron-super-49b-v1 --json
      nemo-trt inspect /models/Llama-3_3-Nemotron-Super-49B-v1
    """
    from rich.table import Table

    from nemo_trt.build import accounting
    from nemo_trt.build.spec import ModelSpec
    from nemo_trt.console import console, print_json
    from nemo_trt.model_facts import DEFAULT_MODEL, resolve_model

    directory = resolve_model(model or DEFAULT_MODEL)
    spec = ModelSpec.from_path(directory)
    summary = accounting.summarize(spec)
    runs = spec.run_lengths()
    if as_json:
        print_json({
            "model": spec.name,
            "architecture": spec.architecture,
            "hidden_size": spec.hidden_size,
            "num_attention_heads": spec.num_attention_heads,
            "head_dim": spec.head_dim,
            "vocab_size": spec.vocab_size,
            "max_position_embeddings": spec.max_position_embeddings,
            "num_layers": spec.num_layers,
            "attention_layers": summary.attention_layers,
            "total_parameters": summary.total_parameters,
            "hf_tensors": summary.hf_tensors,
            "trtllm_tensors": summary.trtllm_tensors,
            "weight_bytes": summary.bytes_by_precision,
            "kv_bytes_per_token": summary.kv_bytes_per_token,
            "per_tp": {str(tp): v for tp, v in summary.per_tp.items()},
            "runs": [{"first": f, "last": last, "count": last - f + 1, "attention": layer.attention.value,
                      "num_kv_heads": layer.num_kv_heads, "ffn": layer.ffn.value,
                      "intermediate_size": layer.intermediate_size, "ffn_mult": layer.ffn_mult}
                     for f, last, layer in runs],
        })
        return

    console.print(f"[bold]{spec.name}[/] ({spec.architecture}): {spec.num_layers} layers, hidden {spec.hidden_size}, "
                  f"{spec.num_attention_heads} heads x {spec.head_dim}, vocab {spec.vocab_size:,}, "
                  f"max positions {spec.max_position_embeddings:,}")
    arch = Table(title="Layers (runs of identical blocks)", title_justify="left")
    for col in ("layers", "count", "attention", "ffn"):
        arch.add_column(col)
    for first, last, layer in runs:
        attn, ffn = _kind(layer)
        arch.add_row(f"{first}" if first == last else f"{first}-{last}", str(last - first + 1), attn, ffn)
    console.print(arch)
    console.print(f"parameters: [bold]{summary.total_parameters:,}[/] ({summary.total_parameters / 1e9:.2f} B); "
                  f"attention layers {summary.attention_layers}/{spec.num_layers}; tensors: HF {summary.hf_tensors}, "
                  f"TensorRT-LLM {summary.trtllm_tensors}")
    bytes_table = Table(title="Weights and KV cache per TP rank (embedding replicated, lm_head split)",
                        title_justify="left")
    for col in ("TP", "BF16 bytes", "FP8 bytes", "KV B/token BF16", "KV B/token FP8"):
        bytes_table.add_column(col, justify="right")
    for tp, v in summary.per_tp.items():
        bytes_table.add_row(str(tp), f"{v['bf16']:,} ({v['bf16'] / 1e9:.1f} GB)",
                            f"{v['fp8']:,} ({v['fp8'] / 1e9:.1f} GB)", f"{v['kv_bf16']:,}", f"{v['kv_fp8']:,}")
    console.print(bytes_table)
    console.print("[dim]FP8: q/k/v/o and gate/up/down (and linear-replacement layers) in FP8; embedding, lm_head "
                  "and norms stay BF16.[/]")

