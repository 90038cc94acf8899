"""The `config.json` of a TensorRT-LLM checkpoint (written once, next to the rank files).

Fields and defaults follow `DeciConfig` (tensorrt_llm/models/nemotron_nas/config.py),
`PretrainedConfig.to_dict` and `QuantConfig` (tensorrt_llm/models/modeling_utils.py); for plain
Llama, `LLaMAConfig` (tensorrt_llm/models/llama/config.py). Global `num_key_value_heads` /
`intermediate_size` of a DeciLM config are placeholders (num_attention_heads, 4*hidden), exactly
as upstream writes them; `layer_configs` holds the real per-layer values.
"""
from __future__ import annotations

from nemo_trt.build.convert.mapping import RankMapping
from nemo_trt.build.convert.weight_map import rank_rules
from nemo_trt.build.spec import AttentionKind, FFNKind, ModelSpec

DTYPE_NAMES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
               "float32": "float32", "fp32": "float32"}


def quantization_block(spec: ModelSpec, precision: str, kv_cache_dtype: str) -> dict:
    exclude = None
    if precision == "fp8":
        # lm_head stays BF16 as in ModelOpt exports ("Disable lm_head quantization for TRT-LLM
        # export"); linear attention/FFN replacements are kept BF16 too (named explicitly).
        exclude = ["lm_head"]
        ffn = "ffn" if spec.is_deci else "mlp"
        for layer in spec.layers:
            if layer.attention is AttentionKind.LINEAR:
                exclude.append(f"transformer.layers.{layer.index}.attention")
            if layer.ffn is FFNKind.LINEAR:
                exclude.append(f"transformer.layers.{layer.index}.{ffn}")
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
        "quantization": quantization_block(spec, precision, kv_cache_dtype),
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


__all__ = ["make_config", "quantization_block", "rank_file", "expected_tensor_count"]
