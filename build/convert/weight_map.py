"""HF name -> TensorRT-LLM name, and how each tensor is split across TP ranks.

Pure functions on (spec, mapping, tensors), read in one screen. The table follows
TensorRT-LLM `tensorrt_llm/models/nemotron_nas/convert.py` (`load_model_weights`) and,
for plain Llama, `tensorrt_llm/models/llama/convert.py` (same names with `mlp.` for `ffn.`):

    transformer.vocab_embedding.weight   <- model.embed_tokens.weight        replicated, first PP stage
    layers.N.input_layernorm.weight      <- layers.l.input_layernorm         replicated
    layers.N.attention.qkv.weight        <- cat(q_r, k_r, v_r) per rank      q column-split; k/v heads
                                                                             duplicated if tp > kv heads
    layers.N.attention.dense.weight      <- self_attn.o_proj                 row-split (dim 1)
    layers.N.attention.weight            <- self_attn.linear_attn            column-split
    layers.N.post_layernorm.weight       <- post_attention_layernorm         replicated
    layers.N.ffn.fc.weight               <- mlp.gate_proj  (activated branch) column-split
    layers.N.ffn.gate.weight             <- mlp.up_proj                      column-split
    layers.N.ffn.proj.weight             <- mlp.down_proj                    row-split
    layers.N.ffn.weight                  <- mlp.linear_mlp                   column-split
    transformer.ln_f.weight              <- model.norm                       replicated, last PP stage
    lm_head.weight                       <- lm_head (or embed_tokens, tied)  vocab zero-padded to a
                                                                             multiple of tp, column-split
N is stage-local: N = l - pp_layers[0].
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

import torch

from nemo_trt.build.convert.mapping import RankMapping
from nemo_trt.build.spec import AttentionKind, FFNKind, ModelSpec
from nemo_trt.errors import NemoTrtError


class Split(str, Enum):
    REPLICATE = "replicate"
    COL = "col"      # dim 0, output rows (TpDim.COLWISE)
    ROW = "row"      # dim 1, input columns (TpDim.ROWWISE)
    QKV = "qkv"      # fused per rank, KV heads duplicated when tp > kv heads
    VOCAB = "vocab"  # dim 0 after zero-padding the vocabulary to a multiple of tp


@dataclass(frozen=True)
class Rule:
    name: str                    # TensorRT-LLM tensor name in the rank file
    sources: tuple[str, ...]     # HF tensor name(s)
    split: Split
    shape: tuple[int, ...]       # shape on one rank
    linear: bool = False         # a GEMM weight that FP8 quantizes
    kv_heads: int | None = None  # QKV only
    layer: int | None = None     # global layer index

    @property
    def module(self) -> str:
        """TensorRT-LLM module prefix (where the FP8 scaling factors live)."""
        return self.name.rsplit(".", 1)[0]

    @property
    def qkv_kv_heads(self) -> int:
        """KV heads of a fused QKV weight (the only rule that carries them)."""
        if self.kv_heads is None:
            raise ValueError(f"{self.name} is not a fused QKV weight: it has no KV head count")
        return self.kv_heads

    @property
    def layer_index(self) -> int:
        """Global layer index of a per-layer weight."""
        if self.layer is None:
            raise ValueError(f"{self.name} does not belong to a layer")
        return self.layer


def pad_vocab_size(vocab: int, tp: int) -> int:
    """`tensorrt_llm._utils.pad_vocab_size`: round up to a multiple of tp."""
    return -(-vocab // tp) * tp


def kv_heads_per_rank(kv_heads: int, tp: int) -> int:
    return max(kv_heads // tp, 1) if kv_heads >= tp else 1


def ffn_prefix(spec: ModelSpec) -> str:
    return "ffn" if spec.is_deci else "mlp"


def parallelism_problems(spec: ModelSpec, tp: int, pp: int) -> list[str]:
    problems: list[str] = []
    if tp < 1 or pp < 1:
        return ["tp and pp must be >= 1"]
    if pp > spec.num_layers:
        problems.append(f"pp {pp} exceeds the {spec.num_layers} layers")
    if spec.num_attention_heads % tp:
        problems.append(f"{spec.num_attention_heads} attention heads do not split into {tp} ranks")
    for layer in spec.layers:
        kv = layer.num_kv_heads
        if kv and (kv % tp if kv >= tp else tp % kv):
            problems.append(f"layer {layer.index}: {kv} KV heads neither divide nor are divided by tp {tp}")
        if layer.intermediate_size and layer.intermediate_size % tp:
            problems.append(f"layer {layer.index}: intermediate size {layer.intermediate_size} "
                            f"is not divisible by tp {tp}")
        if (layer.attention is AttentionKind.LINEAR or layer.ffn is FFNKind.LINEAR) and spec.hidden_size % tp:
            problems.append(f"layer {layer.index}: hidden size {spec.hidden_size} is not divisible by tp {tp}")
    return problems


def check_parallelism(spec: ModelSpec, tp: int, pp: int) -> None:
    """Refuse a TP/PP layout the model cannot take, naming the layer and the sizes that work."""
    problems = parallelism_problems(spec, tp, pp)
    if problems:
        ok = [t for t in (1, 2, 4, 8, 16) if not parallelism_problems(spec, t, 1)]
        raise NemoTrtError(f"the model cannot be split as tp={tp} pp={pp}: " + "; ".join(problems[:3]),
                           f"use a tensor-parallel size the model supports ({', '.join(map(str, ok)) or 'none'}) "
                           f"and pp <= {spec.num_layers}")


def rank_rules(spec: ModelSpec, m: RankMapping) -> list[Rule]:
    """Every weight of one rank file, in file order, with its per-rank shape."""
    h, d, tp, heads = spec.hidden_size, spec.head_dim, m.tp_size, spec.num_attention_heads
    ffn = ffn_prefix(spec)
    rules: list[Rule] = []
    if m.is_first_pp_rank:
        rules.append(Rule("transformer.vocab_embedding.weight", ("model.embed_tokens.weight",),
                          Split.REPLICATE, (spec.vocab_size, h)))
    layers = m.pp_layers(spec.num_layers)
    for layer in (spec.layers[i] for i in layers):
        i, p = layer.index, f"transformer.layers.{layer.index - layers[0]}."
        src = f"model.layers.{i}."
        if layer.has_input_layernorm:
            rules.append(Rule(p + "input_layernorm.weight", (src + "input_layernorm.weight",),
                              Split.REPLICATE, (h,), layer=i))
        if layer.attention is AttentionKind.ATTENTION:
            kv = layer.attention_kv_heads
            width = (heads // tp + 2 * kv_heads_per_rank(kv, tp)) * d
            rules.append(Rule(p + "attention.qkv.weight",
                              tuple(f"{src}self_attn.{x}_proj.weight" for x in "qkv"),
                              Split.QKV, (width, h), linear=True, kv_heads=kv, layer=i))
            rules.append(Rule(p + "attention.dense.weight", (src + "self_attn.o_proj.weight",),
                              Split.ROW, (h, heads * d // tp), linear=True, layer=i))
        elif layer.attention is AttentionKind.LINEAR:
            rules.append(Rule(p + "attention.weight", (src + "self_attn.linear_attn.weight",),
                              Split.COL, (h // tp, h), layer=i))
        if layer.has_post_layernorm:
            rules.append(Rule(p + "post_layernorm.weight", (src + "post_attention_layernorm.weight",),
                              Split.REPLICATE, (h,), layer=i))
        if layer.ffn is FFNKind.MLP:
            f = layer.mlp_intermediate_size // tp
            rules.append(Rule(p + f"{ffn}.fc.weight", (src + "mlp.gate_proj.weight",),
                              Split.COL, (f, h), linear=True, layer=i))
            rules.append(Rule(p + f"{ffn}.gate.weight", (src + "mlp.up_proj.weight",),
                              Split.COL, (f, h), linear=True, layer=i))
            rules.append(Rule(p + f"{ffn}.proj.weight", (src + "mlp.down_proj.weight",),
                              Split.ROW, (h, f), linear=True, layer=i))
        elif layer.ffn is FFNKind.LINEAR:
            rules.append(Rule(p + f"{ffn}.weight", (src + "mlp.linear_mlp.weight",),
                              Split.COL, (h // tp, h), layer=i))
    if m.is_last_pp_rank:
        rules.append(Rule("transformer.ln_f.weight", ("model.norm.weight",), Split.REPLICATE, (h,)))
        head = "model.embed_tokens.weight" if spec.tie_word_embeddings else "lm_head.weight"
        rules.append(Rule("lm_head.weight", (head,), Split.VOCAB, (pad_vocab_size(spec.vocab_size, tp) // tp, h)))
    return rules


# ---- forward: HF tensors -> one rank's tensor ---------------------------------
def split_rows(t: torch.Tensor, tp: int, tp_rank: int, dim: int = 0) -> torch.Tensor:
    """`convert_utils.split`: equal contiguous chunks (a view; no copy)."""
    size = t.shape[dim] // tp
    return t.narrow(dim, tp_rank * size, size)


def dup_kv_heads(t: torch.Tensor, kv_heads: int, tp: int) -> torch.Tensor:
    """`convert_utils.dup_kv_weight`: repeat each head tp/kv times, adjacent copies (h0 h0 h1 h1 ...)."""
    reps = tp // kv_heads
    head = t.shape[0] // kv_heads
    repeated = t.reshape(kv_heads, 1, head, -1).expand(kv_heads, reps, head, t.shape[-1])
    return repeated.reshape(kv_heads * reps * head, -1)


def kv_for_rank(t: torch.Tensor, kv_heads: int, tp: int, tp_rank: int) -> torch.Tensor:
    if tp > kv_heads:
        t = dup_kv_heads(t, kv_heads, tp)
    return split_rows(t, tp, tp_rank)


def tensor_for_rank(rule: Rule, sources: Sequence[torch.Tensor], tp: int, tp_rank: int,
                    vocab_size: int | None = None) -> torch.Tensor:
    """Apply the rule's split to already-loaded HF tensors (float or FP8 alike)."""
    pieces = pieces_for_rank(rule, sources, tp, tp_rank)
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, 0)


def pieces_for_rank(rule: Rule, sources: Sequence[torch.Tensor], tp: int, tp_rank: int) -> list[torch.Tensor]:
    """`tensor_for_rank` as consecutive row blocks (views where possible), so a writer can stream
    the fused qkv or the zero-padded vocabulary without first copying them into one tensor."""
    if rule.split is Split.REPLICATE:
        return [sources[0]]
    if rule.split is Split.COL:
        return [split_rows(sources[0], tp, tp_rank, 0)]
    if rule.split is Split.ROW:
        return [split_rows(sources[0], tp, tp_rank, 1)]
    if rule.split is Split.QKV:
        q, k, v = sources
        return [split_rows(q, tp, tp_rank), kv_for_rank(k, rule.qkv_kv_heads, tp, tp_rank),
                kv_for_rank(v, rule.qkv_kv_heads, tp, tp_rank)]
    if rule.split is Split.VOCAB:
        t = sources[0]
        padded = pad_vocab_size(t.shape[0], tp)
        rows = padded // tp
        start = tp_rank * rows
        part = t[start:min(start + rows, t.shape[0])]
        if part.shape[0] < rows:  # zero-pad only this rank's tail, never the whole table
            return [part, part.new_zeros((rows - part.shape[0], t.shape[1]))]
        return [part]
    raise AssertionError(rule.split)


# ---- inverse: rank tensors -> HF tensors (reader and verify) -------------------
def merge_ranks(rule: Rule, parts: Sequence[torch.Tensor], head_dim: int, num_heads: int,
                vocab_size: int) -> list[torch.Tensor]:
    """Undo `tensor_for_rank` over all TP ranks; returns one tensor per HF source."""
    tp = len(parts)
    if rule.split is Split.REPLICATE:
        return [parts[0]]
    if rule.split is Split.COL:
        return [torch.cat(list(parts), 0)]
    if rule.split is Split.ROW:
        return [torch.cat(list(parts), 1)]
    if rule.split is Split.VOCAB:
        return [torch.cat(list(parts), 0)[:vocab_size]]
    kv = rule.qkv_kv_heads
    qw, kvw = num_heads // tp * head_dim, kv_heads_per_rank(kv, tp) * head_dim
    q = torch.cat([p[:qw] for p in parts], 0)
    k = torch.cat([p[qw:qw + kvw] for p in parts], 0)
    v = torch.cat([p[qw + kvw:qw + 2 * kvw] for p in parts], 0)
    if tp > kv:  # keep the first copy of every duplicated head
        reps = tp // kv
        k = k.reshape(kv, reps, head_dim, -1)[:, 0].reshape(kv * head_dim, -1)
        v = v.reshape(kv, reps, head_dim, -1)[:, 0].reshape(kv * head_dim, -1)
    return [q, k, v]


def hf_module(source: str) -> str:
    """HF module of a weight name: model.layers.3.mlp.up_proj.weight -> model.layers.3.mlp.up_proj."""
    return source.rsplit(".", 1)[0]


GetTensor = Callable[[str], torch.Tensor]
