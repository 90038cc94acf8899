"""Typed model spec parsed from a DeciLM (`nemotron-nas`) or Llama `config.json`.

Everything downstream (accounting, planner, converter, reference model) sizes
itself from this spec, never from the global `num_key_value_heads` /
`intermediate_size` placeholders of a DeciLM config (they are null or wrong).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from nemo_trt.errors import NemoTrtError

DECI_ARCHITECTURES = {"DeciLMForCausalLM"}
LLAMA_ARCHITECTURES = {"LlamaForCausalLM"}
DECI_MODEL_TYPES = {"nemotron-nas", "deci"}


class AttentionKind(str, Enum):
    ATTENTION = "attention"
    LINEAR = "linear"
    NO_OP = "no_op"


class FFNKind(str, Enum):
    MLP = "mlp"
    LINEAR = "linear"
    NO_OP = "no_op"


def find_multiple(n: int, k: int) -> int:
    """Smallest multiple of k that is >= n (upstream `_find_multiple`)."""
    return n if n % k == 0 else n + k - n % k


def ffn_mult_to_intermediate_size(ffn_mult: float, hidden_size: int) -> int:
    """Upstream rule: truncate 2/3·mult·hidden to int, then round up to a multiple of 256."""
    return find_multiple(int(2 * ffn_mult * hidden_size / 3), 256)


@dataclass(frozen=True)
class LayerSpec:
    index: int
    attention: AttentionKind
    num_kv_heads: int | None  # set only for AttentionKind.ATTENTION
    ffn: FFNKind
    intermediate_size: int | None  # set only for FFNKind.MLP
    ffn_mult: float | None = None

    @property
    def has_kv_cache(self) -> bool:
        return self.attention is AttentionKind.ATTENTION

    @property
    def attention_kv_heads(self) -> int:
        """num_kv_heads of an attention layer (the only kind that has KV heads)."""
        if self.num_kv_heads is None:
            raise ValueError(f"layer {self.index} ({self.attention.value}) has no KV heads")
        return self.num_kv_heads

    @property
    def mlp_intermediate_size(self) -> int:
        """intermediate_size of an MLP layer (the only FFN kind that has one)."""
        if self.intermediate_size is None:
            raise ValueError(f"layer {self.index} ({self.ffn.value} FFN) has no intermediate size")
        return self.intermediate_size

    @property
    def has_input_layernorm(self) -> bool:
        return self.attention is not AttentionKind.NO_OP

    @property
    def has_post_layernorm(self) -> bool:
        return self.ffn is not FFNKind.NO_OP

    def to_trtllm(self) -> dict:
        """The `layer_configs` entry of a TensorRT-LLM DeciLM checkpoint config."""
        return {
            "attention": {"impl": self.attention.value, "num_key_value_heads": self.num_kv_heads},
            "ffn": {"impl": self.ffn.value, "intermediate_size": self.intermediate_size},
        }


@dataclass(frozen=True)
class RopeScaling:
    rope_type: str
    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def to_dict(self) -> dict:
        return {
            "rope_type": self.rope_type,
            "factor": self.factor,
            "low_freq_factor": self.low_freq_factor,
            "high_freq_factor": self.high_freq_factor,
            "original_max_position_embeddings": self.original_max_position_embeddings,
        }


@dataclass(frozen=True)
class ModelSpec:
    name: str
    architecture: str  # "DeciLMForCausalLM" or "LlamaForCausalLM"
    hidden_size: int
    num_attention_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    rope_scaling: RopeScaling | None
    rms_norm_eps: float
    hidden_act: str
    tie_word_embeddings: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    torch_dtype: str
    layers: tuple[LayerSpec, ...]
    raw_config: dict = field(default_factory=dict, compare=False, repr=False)

    # ---- derived views -------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def is_deci(self) -> bool:
        return self.architecture in DECI_ARCHITECTURES

    @property
    def attention_layers(self) -> list[LayerSpec]:
        return [layer for layer in self.layers if layer.attention is AttentionKind.ATTENTION]

    @property
    def kv_head_counts(self) -> list[int]:
        return [layer.attention_kv_heads for layer in self.attention_layers]

    def hf_tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor the HF checkpoint must contain, with its [out, in] shape, in a stable order."""
        h, d = self.hidden_size, self.head_dim
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab_size, h)}
        for layer in self.layers:
            p = f"model.layers.{layer.index}."
            if layer.has_input_layernorm:
                shapes[p + "input_layernorm.weight"] = (h,)
            if layer.attention is AttentionKind.ATTENTION:
                kv = layer.attention_kv_heads * d
                shapes[p + "self_attn.q_proj.weight"] = (self.num_attention_heads * d, h)
                shapes[p + "self_attn.k_proj.weight"] = (kv, h)
                shapes[p + "self_attn.v_proj.weight"] = (kv, h)
                shapes[p + "self_attn.o_proj.weight"] = (h, self.num_attention_heads * d)
            elif layer.attention is AttentionKind.LINEAR:
                shapes[p + "self_attn.linear_attn.weight"] = (h, h)
            if layer.has_post_layernorm:
                shapes[p + "post_attention_layernorm.weight"] = (h,)
            if layer.ffn is FFNKind.MLP:
                f = layer.mlp_intermediate_size
                shapes[p + "mlp.gate_proj.weight"] = (f, h)
                shapes[p + "mlp.up_proj.weight"] = (f, h)
                shapes[p + "mlp.down_proj.weight"] = (h, f)
            elif layer.ffn is FFNKind.LINEAR:
                shapes[p + "mlp.linear_mlp.weight"] = (h, h)
        shapes["model.norm.weight"] = (h,)
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, h)
        return shapes

    def run_lengths(self) -> list[tuple[int, int, LayerSpec]]:
        """(first, last, layer) for each run of consecutive layers of identical kind and width."""
        runs: list[tuple[int, int, LayerSpec]] = []
        for layer in self.layers:
            key = (layer.attention, layer.num_kv_heads, layer.ffn, layer.intermediate_size)
            if runs:
                first, _, prev = runs[-1]
                if (prev.attention, prev.num_kv_heads, prev.ffn, prev.intermediate_size) == key:
                    runs[-1] = (first, layer.index, prev)
                    continue
            runs.append((layer.index, layer.index, layer))
        return runs

    # ---- parsing ---------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: dict[str, Any], name: str | None = None, source: str = "config.json") -> ModelSpec:
        return _parse(cfg, name=name, source=source)

    @classmethod
    def from_path(cls, path: str | Path, name: str | None = None) -> ModelSpec:
        """Parse a model directory (with config.json) or a config.json file."""
        path = Path(path)
        cfg_path = path / "config.json" if path.is_dir() else path
        if not cfg_path.is_file():
            raise NemoTrtError(
                f"no config.json at {cfg_path}",
                "point at a Hugging Face checkpoint directory that contains config.json",
            )
        try:
            cfg = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise NemoTrtError(
                f"{cfg_path} is not valid JSON: {exc}",
                "restore config.json from the original checkpoint (it may be truncated)",
            ) from exc
        if not isinstance(cfg, dict):
            raise NemoTrtError(f"{cfg_path} must hold a JSON object, got {type(cfg).__name__}",
                               "restore config.json from the original checkpoint")
        return _parse(cfg, name=name or (path.name if path.is_dir() else path.parent.name), source=str(cfg_path))


def _require(cfg: dict, key: str, typ: type | tuple, source: str):
    if key not in cfg or cfg[key] is None:
        raise NemoTrtError(f"{source}: required field {key!r} is missing",
                           "restore config.json from the original checkpoint")
    value = cfg[key]
    if typ is int and isinstance(value, bool) or not isinstance(value, typ):
        raise NemoTrtError(f"{source}: field {key!r} must be {getattr(typ, '__name__', typ)}, got {value!r}",
                           "restore config.json from the original checkpoint")
    return value


def _parse_rope(cfg: dict, source: str) -> RopeScaling | None:
    rs = cfg.get("rope_scaling")
    if rs is None:
        return None
    if not isinstance(rs, dict):
        raise NemoTrtError(f"{source}: rope_scaling must be an object, got {rs!r}",
                           "restore config.json from the original checkpoint")
    rope_type = rs.get("rope_type", rs.get("type"))
    if rope_type != "llama3":
        raise NemoTrtError(f"{source}: rope_scaling type {rope_type!r} is not supported (only 'llama3')",
                           "use a Llama-3 family checkpoint")
    try:
        return RopeScaling(
            rope_type="llama3",
            factor=float(rs["factor"]),
            low_freq_factor=float(rs["low_freq_factor"]),
            high_freq_factor=float(rs["high_freq_factor"]),
            original_max_position_embeddings=int(rs["original_max_position_embeddings"]),
        )
    except KeyError as exc:
        raise NemoTrtError(f"{source}: rope_scaling is missing {exc.args[0]!r}",
                           "restore config.json from the original checkpoint") from exc


_UNSUPPORTED_ATTENTION = {
    "sparsify": None,
    "num_sink_tokens": None,
    "unshifted_sink": False,
    "use_prefill_window_in_sink_attention": False,
    "window_length": None,
}


def _parse_block(i: int, block: dict, num_heads: int, hidden: int, source: str) -> LayerSpec:
    if not isinstance(block, dict) or "attention" not in block or "ffn" not in block:
        raise NemoTrtError(f"{source}: block_configs[{i}] must have 'attention' and 'ffn' objects",
                           "restore config.json from the original checkpoint")
    att, ffn = block["attention"], block["ffn"]
    if not isinstance(att, dict) or not isinstance(ffn, dict):
        raise NemoTrtError(f"{source}: block_configs[{i}] 'attention' and 'ffn' must be JSON objects",
                           "restore config.json from the original checkpoint")
    for key, default in _UNSUPPORTED_ATTENTION.items():
        value = att.get(key)
        if value is not None and value != default:  # null means "unset" for every one of these keys
            raise NemoTrtError(
                f"{source}: layer {i} uses attention.{key}={att[key]!r}, which TensorRT-LLM's DeciLM "
                "does not support (sparsification, sink tokens and windows are not implemented)",
                "use a checkpoint without sparsify/sink/window attention blocks",
            )
    if ffn.get("sparsify") is not None:
        raise NemoTrtError(f"{source}: layer {i} uses ffn.sparsify, which is not supported",
                           "use a checkpoint without sparsified FFN blocks")
    if att.get("no_op"):
        a_kind, kv = AttentionKind.NO_OP, None
    elif att.get("replace_with_linear"):
        a_kind, kv = AttentionKind.LINEAR, None
    else:
        group = att.get("n_heads_in_group")
        if not isinstance(group, int) or group <= 0 or num_heads % group:
            raise NemoTrtError(
                f"{source}: layer {i} has n_heads_in_group={group!r}; it must be a positive divisor "
                f"of num_attention_heads={num_heads}",
                "restore config.json from the original checkpoint",
            )
        a_kind, kv = AttentionKind.ATTENTION, num_heads // group
    mult = ffn.get("ffn_mult")
    if ffn.get("no_op"):
        f_kind, size = FFNKind.NO_OP, None
    elif ffn.get("replace_with_linear"):
        f_kind, size = FFNKind.LINEAR, None
    else:
        if not isinstance(mult, (int, float)) or isinstance(mult, bool) or mult <= 0:
            raise NemoTrtError(f"{source}: layer {i} has ffn_mult={mult!r}; it must be a positive number",
                               "restore config.json from the original checkpoint")
        f_kind, size = FFNKind.MLP, ffn_mult_to_intermediate_size(float(mult), hidden)
    return LayerSpec(i, a_kind, kv, f_kind, size, float(mult) if isinstance(mult, (int, float)) else None)


def _parse(cfg: dict[str, Any], name: str | None, source: str) -> ModelSpec:
    archs = cfg.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs else None
    model_type = cfg.get("model_type")
    if arch in DECI_ARCHITECTURES or model_type in DECI_MODEL_TYPES:
        arch = "DeciLMForCausalLM"
    elif arch in LLAMA_ARCHITECTURES or model_type == "llama":
        arch = "LlamaForCausalLM"
    else:
        raise NemoTrtError(
            f"{source}: architecture {arch!r} (model_type {model_type!r}) is not supported",
            "nemo-trt converts DeciLMForCausalLM (nemotron-nas) and LlamaForCausalLM checkpoints",
        )
    hidden = _require(cfg, "hidden_size", int, source)
    heads = _require(cfg, "num_attention_heads", int, source)
    n_layers = _require(cfg, "num_hidden_layers", int, source)
    vocab = _require(cfg, "vocab_size", int, source)
    if hidden <= 0 or heads <= 0 or n_layers <= 0 or vocab <= 0:
        raise NemoTrtError(f"{source}: sizes must be positive", "restore config.json from the original checkpoint")
    head_dim = cfg.get("head_dim") or hidden // heads
    if cfg.get("head_dim") is None and hidden % heads:
        raise NemoTrtError(f"{source}: hidden_size {hidden} is not divisible by num_attention_heads {heads}",
                           "restore config.json from the original checkpoint")
    if arch == "DeciLMForCausalLM":
        blocks = cfg.get("block_configs")
        if blocks is None and "num_key_value_heads_per_layer" in cfg:
            raise NemoTrtError(f"{source}: old DeciLM-7B style config (num_key_value_heads_per_layer) is not supported",
                               "use a Nemotron-NAS checkpoint with block_configs")
        if not isinstance(blocks, list):
            raise NemoTrtError(f"{source}: DeciLM config has no block_configs list",
                               "restore config.json from the original checkpoint")
        if len(blocks) != n_layers:
            raise NemoTrtError(
                f"{source}: block_configs has {len(blocks)} entries but num_hidden_layers is {n_layers}",
                "restore config.json from the original checkpoint",
            )
        layers = tuple(_parse_block(i, b, heads, hidden, source) for i, b in enumerate(blocks))
    else:
        kv = cfg.get("num_key_value_heads") or heads
        inter = _require(cfg, "intermediate_size", int, source)
        if heads % kv:
            raise NemoTrtError(f"{source}: num_key_value_heads {kv} does not divide num_attention_heads {heads}",
                               "restore config.json from the original checkpoint")
        layers = tuple(LayerSpec(i, AttentionKind.ATTENTION, kv, FFNKind.MLP, inter) for i in range(n_layers))
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise NemoTrtError(f"{source}: attention_bias / mlp_bias are not supported",
                           "use a checkpoint without projection biases (all Llama-3 Nemotron models)")
    eos = cfg.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if isinstance(eos, int) else ())
    return ModelSpec(
        name=name or cfg.get("_name_or_path") or "model",
        architecture=arch,
        hidden_size=hidden,
        num_attention_heads=heads,
        head_dim=int(head_dim),
        vocab_size=vocab,
        max_position_embeddings=int(cfg.get("max_position_embeddings", 8192)),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        rope_scaling=_parse_rope(cfg, source),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        hidden_act=str(cfg.get("hidden_act", "silu")),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_ids=eos_ids,
        torch_dtype=str(cfg.get("torch_dtype", "bfloat16")),
        layers=layers,
        raw_config=cfg,
    )
