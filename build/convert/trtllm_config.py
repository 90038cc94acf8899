"""The `config.json` of a TensorRT-LLM checkpoint (written once, next to the rank files).

Fields and defaults follow `DeciConfig` (tensorrt_llm/models/nemotron_nas/config.py),
`PretrainedConfig.to_dict` and `QuantConfig` (tensorrt_llm/models/modeling_utils.py); for plain
Llama, `LLaMAConfig` (tensorrt_llm/models/llama/config.py). Global `num_key_value_heads` /
`intermediate_size` of a DeciLM config are placeholders (num_attention_heads, 4*hidden), exactly
as upstream writes them; `layer_configs` holds the real per-layer values.
"""
from __future__ import annotations

from nemo_trt.build.convert.mapping import RankMapping, pp_layer_range
from nemo_trt.build.convert.weight_map import rank_rules
from nemo_trt.build.spec import AttentionKind, FFNKind, ModelSpec

DTYPE_NAMES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
               "float32": "float32", "fp32": "float32"}


def excluded_modules(spec: ModelSpec, pp: int) -> list[str]:
    """Modules an FP8 checkpoint keeps in BF16, named the way TensorRT-LLM matches them.

    quantize_layers() (tensorrt_llm/quantization/quantize.py) tests every module of the model it
    builds on a rank with fnmatchcase(name, pattern) and turns the ColumnLinear/RowLinear ones no
    pattern matches into FP8Linear/FP8RowLinear. Under pipeline parallelism that model holds one
    stage, whose layers are numbered from 0 (DeciLMDecoderLayerList over mapping.pp_layers(), a
    ModuleList: `transformer.layers.<stage-local index>`). One config.json serves every stage, so
    the list is the union of each stage's local names. On a stage where a listed index is a normal
    layer the name matches its Attention/GatedMLP container, which quantize_layers never replaces
    and whose qkv/dense/fc/gate/proj children it does not match: the union excludes exactly the
    linear-attention/linear-FFN replacements (LinearAttention/LinearFFN, ColumnLinear subclasses)
    of every stage, and lm_head (ModelOpt exports keep it BF16).
    """
    ffn = "ffn" if spec.is_deci else "mlp"
    names: set[tuple[int, str]] = set()
    for stage in range(pp):
        for local, index in enumerate(pp_layer_range(spec.num_layers, pp, stage)):
            layer = spec.layers[index]
            if layer.attention is AttentionKind.LINEAR:
                names.add((local, "attention"))
            if layer.ffn is FFNKind.LINEAR:
                names.add((local, ffn))
    return ["lm_head"] + [f"transformer.layers.{local}.{module}" for local, module in sorted(names)]


def quantization_block(spec: ModelSpec, precision: str, kv_cache_dtype: str, pp: int = 1) -> dict:
    exclude = excluded_modules(spec, pp) if precision == "fp8" else None
    return {
        "quant_algo": "FP8" if precision == "fp8" else None,
        "kv_cache_quant_algo": "FP8" if kv_cache_dtype == "fp8" else None,
        "group_size": 128,
        "smoothquant_val": 0.5,
        "clamp_val": None,
        "use_meta_recipe": False,
        "has_zero_point": False,
        "pre_quant_scale": False,
        "exclude_modules": exclude,
    }


def make_config(spec: ModelSpec, tp: int, pp: int, *, precision: str = "bf16",
                kv_cache_dtype: str = "bf16", dtype: str = "bfloat16") -> dict:
    h = spec.hidden_size
    cfg: dict = {
        "architecture": spec.architecture,
        "dtype": DTYPE_NAMES[dtype],
        "logits_dtype": "float32",
        "vocab_size": spec.vocab_size,
        "hidden_size": h,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_attention_heads,
        "head_size": spec.head_dim,
        "rotary_embedding_dim": spec.head_dim,
        "qk_layernorm": False,
        "hidden_act": spec.hidden_act,
        "norm_epsilon": spec.rms_norm_eps,
        "position_embedding_type": "rope_gpt_neox",
        "max_position_embeddings": spec.max_position_embeddings,
        "rotary_base": spec.rope_theta,
        "rotary_scaling": spec.rope_scaling.to_dict() if spec.rope_scaling else None,
        "use_parallel_embedding": False,
        "embedding_sharding_dim": 0,
        "share_embedding_table": False,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "mapping": RankMapping(tp, pp).to_config(),
        "quantization": quantization_block(spec, precision, kv_cache_dtype, pp),
    }
    if spec.is_deci:
        cfg["num_key_value_heads"] = spec.num_attention_heads  # placeholder (HF value is null)
        cfg["intermediate_size"] = 4 * h                       # placeholder (HF value is null)
        cfg["layer_configs"] = [layer.to_trtllm() for layer in spec.layers]
        # "HACK" fields DeciConfig.__init__ derives for the runtime
        cfg["layer_types"] = [layer.attention.value for layer in spec.layers]
        cfg["num_kv_heads_per_layer"] = [layer.num_kv_heads for layer in spec.attention_layers]
    else:
        first = spec.layers[0]
        cfg["num_key_value_heads"] = first.num_kv_heads
        cfg["intermediate_size"] = first.intermediate_size
        cfg["mlp_bias"] = False
        cfg["attn_bias"] = False
        cfg["residual_mlp"] = False
    return cfg


def rank_file(rank: int) -> str:
    return f"rank{rank}.safetensors"


def expected_tensor_count(spec: ModelSpec, tp: int, pp: int, rank: int) -> int:
    return len(rank_rules(spec, RankMapping(tp, pp, rank)))


__all__ = ["make_config", "quantization_block", "excluded_modules", "rank_file", "expected_tensor_count"]
