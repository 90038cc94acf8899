"""Read a converted TensorRT-LLM checkpoint back into HF names (for verify and the reference model).

Inverts the conversion: merges TP ranks and PP stages, unfuses qkv, drops duplicated KV heads,
removes vocabulary padding and dequantizes FP8 weights (`w_fp8 * weights_scaling_factor`).

    spec, tensors = read_converted_as_hf(out_dir)       # tensors: Iterator[(hf_name, Tensor)]
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from nemo_trt.build.convert import fp8
from nemo_trt.build.convert.mapping import RankMapping, rank_of
from nemo_trt.build.convert.trtllm_config import rank_file
from nemo_trt.build.convert.weight_map import Rule, merge_ranks, rank_rules
from nemo_trt.build.spec import (AttentionKind, FFNKind, LayerSpec, ModelSpec, RopeScaling, _parse_block)
from nemo_trt.errors import NemoTrtError


def spec_from_trtllm_config(cfg: dict, name: str = "converted") -> ModelSpec:
    """A ModelSpec from a TensorRT-LLM checkpoint config (layer_configs, or ModelOpt's block_configs)."""
    try:
        arch = cfg["architecture"]
        hidden, heads, n = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
        if arch == "DeciLMForCausalLM":
            if cfg.get("layer_configs") is not None:
                layers = tuple(
                    LayerSpec(i, AttentionKind(c["attention"]["impl"]), c["attention"].get("num_key_value_heads"),
                              FFNKind(c["ffn"]["impl"]), c["ffn"].get("intermediate_size"))
                    for i, c in enumerate(cfg["layer_configs"]))
            else:
                layers = tuple(_parse_block(i, b, heads, hidden, "config.json")
                               for i, b in enumerate(cfg["block_configs"]))
        elif arch == "LlamaForCausalLM":
            layers = tuple(LayerSpec(i, AttentionKind.ATTENTION, cfg["num_key_value_heads"], FFNKind.MLP,
                                     cfg["intermediate_size"]) for i in range(n))
        else:
            raise NemoTrtError(f"converted checkpoint has architecture {arch!r}",
                               "nemo-trt reads DeciLMForCausalLM and LlamaForCausalLM checkpoints")
        if len(layers) != n:
            raise NemoTrtError(f"config.json lists {len(layers)} layer configs for {n} layers",
                               "reconvert the checkpoint")
        rs = cfg.get("rotary_scaling")
        return ModelSpec(
            name=name, architecture=arch, hidden_size=hidden, num_attention_heads=heads,
            head_dim=cfg.get("head_size") or hidden // heads, vocab_size=cfg["vocab_size"],
            max_position_embeddings=cfg["max_position_embeddings"], rope_theta=float(cfg["rotary_base"]),
            rope_scaling=RopeScaling(**{k: rs[k] for k in ("rope_type", "factor", "low_freq_factor", "high_freq_factor",
                                                          "original_max_position_embeddings")}) if rs else None,
            rms_norm_eps=float(cfg["norm_epsilon"]), hidden_act=cfg.get("hidden_act", "silu"),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)), bos_token_id=None, eos_token_ids=(),
            torch_dtype=cfg.get("dtype", "bfloat16"), layers=layers, raw_config=cfg)
    except (KeyError, TypeError, ValueError) as exc:
        raise NemoTrtError(f"TensorRT-LLM config.json is incomplete or malformed ({exc!r})",
                           "reconvert the checkpoint with nemo-trt convert") from exc


@dataclass
class ConvertedCheckpoint:
    directory: Path
    config: dict
    spec: ModelSpec
    tp: int
    pp: int

    @classmethod
    def open(cls, directory: str | Path) -> ConvertedCheckpoint:
        directory = Path(directory)
        path = directory / "config.json"
        if not path.is_file():
            raise NemoTrtError(f"no config.json in {directory}", "point at a directory written by nemo-trt convert")
        try:
            cfg = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise NemoTrtError(f"{path} is not valid JSON", "reconvert the checkpoint") from exc
        spec = spec_from_trtllm_config(cfg, directory.name)
        mapping = cfg.get("mapping") or {}
        tp, pp = int(mapping.get("tp_size", 1)), int(mapping.get("pp_size", 1))
        missing = [rank_file(r) for r in range(tp * pp) if not (directory / rank_file(r)).is_file()]
        if missing:
            raise NemoTrtError(f"{directory} lacks {', '.join(missing)}", "reconvert the checkpoint")
        return cls(directory, cfg, spec, tp, pp)

    @property
    def quantized(self) -> bool:
        return (self.config.get("quantization") or {}).get("quant_algo") == "FP8"

    def stage_rules(self, pp_rank: int) -> list[Rule]:
        return rank_rules(self.spec, RankMapping(self.tp, self.pp, rank_of(0, pp_rank, self.tp)))

    def iter_rules(self) -> Iterator[tuple[Rule, list[dict[str, torch.Tensor]]]]:
        """(rule, per-TP-rank {name: tensor} of the rule's weight and scales), stage by stage."""
        from safetensors import SafetensorError, safe_open

        for s in range(self.pp):
            handles = []
            for r in range(self.tp):
                path = self.directory / rank_file(rank_of(r, s, self.tp))
                try:
                    handles.append(safe_open(str(path), framework="pt"))
                except (SafetensorError, OSError) as exc:
                    raise NemoTrtError(f"cannot open {path.name}: {exc}", "reconvert the checkpoint") from exc
            for rule in self.stage_rules(s):
                parts = []
                for r, h in enumerate(handles):
                    names = [rule.name] + [f"{rule.module}.{x}" for x in (fp8.WEIGHT_SCALE, fp8.ACTIVATION_SCALE)]
                    if rule.name.endswith("attention.qkv.weight"):
                        names.append(rule.name.replace("qkv.weight", fp8.KV_SCALE))
                    keys = set(h.keys())
                    if rule.name not in keys:
                        raise NemoTrtError(f"{rank_file(rank_of(r, s, self.tp))} lacks {rule.name}",
                                           "reconvert the checkpoint")
                    parts.append({n: h.get_tensor(n) for n in names if n in keys})
                yield rule, parts

    def iter_hf(self, dequantize_to: torch.dtype = torch.float32) -> Iterator[tuple[str, torch.Tensor]]:
        for rule, parts in self.iter_rules():
            weights = []
            for p in parts:
                w = p[rule.name]
                if w.dtype == fp8.FP8:
                    w = fp8.dequantize(w, float(p[f"{rule.module}.{fp8.WEIGHT_SCALE}"]), dequantize_to)
                weights.append(w)
            merged = merge_ranks(rule, weights, self.spec.head_dim, self.spec.num_attention_heads, self.spec.vocab_size)
            for name, tensor in zip(rule.sources, merged):
                if rule.name == "lm_head.weight" and self.spec.tie_word_embeddings:
                    continue  # the embedding already came from stage 0
                yield name, tensor


def read_converted_as_hf(directory: str | Path, dequantize_to: torch.dtype = torch.float32
                         ) -> tuple[ModelSpec, Iterator[tuple[str, torch.Tensor]]]:
    """(spec, iterator of (HF name, tensor)); FP8 weights come back dequantized to `dequantize_to`."""
    ckpt = ConvertedCheckpoint.open(directory)
    return ckpt.spec, ckpt.iter_hf(dequantize_to)
