"""PyTorch reference implementation of the DeciLM (nemotron-nas) architecture.

Built from transformers' Llama building blocks (`LlamaRMSNorm`, `LlamaMLP`,
`LlamaRotaryEmbedding` with llama3 scaling, `apply_rotary_pos_emb`,
`repeat_kv`), configured per layer from a `ModelSpec`:

- attention: GQA with the layer's own KV-head count, `replace_with_linear`
  (one hidden x hidden linear) or `no_op` (no norm, no module, no KV cache);
- FFN: SwiGLU MLP with the layer's own intermediate size, `replace_with_linear`
  or `no_op`.

Module names equal the HF tensor names, so `state_dict()` keys are exactly
`ModelSpec.hf_tensor_shapes()` and forward hooks on `nn.Linear` modules see
the same names as the checkpoint (the FP8 calibrator relies on this).
Semantics follow the model reference §6 (TensorRT-LLM `modeling_nemotron_nas.py`,
vLLM `nemotron_nas.py`): a no-op sub-block passes the residual stream through.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    repeat_kv,
)

from nemo_trt.build.spec import AttentionKind, FFNKind, LayerSpec, ModelSpec
from nemo_trt.errors import NemoTrtError

if TYPE_CHECKING:  # pragma: no cover
    from nemo_trt.reference.sampling import SamplingParams
    from nemo_trt.reference.session import Session


def llama_config(spec: ModelSpec, *, num_key_value_heads: int | None = None,
                 intermediate_size: int | None = None) -> LlamaConfig:
    """A transformers LlamaConfig carrying the spec's global settings (for the Llama modules)."""
    kwargs: dict[str, Any] = dict(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=num_key_value_heads or spec.num_attention_heads,
        head_dim=spec.head_dim,
        intermediate_size=intermediate_size or spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        max_position_embeddings=spec.max_position_embeddings,
        rope_theta=spec.rope_theta,
        rms_norm_eps=spec.rms_norm_eps,
        hidden_act=spec.hidden_act,
        tie_word_embeddings=spec.tie_word_embeddings,
        attention_bias=False,
        mlp_bias=False,
    )
    if spec.rope_scaling is not None:
        kwargs["rope_scaling"] = spec.rope_scaling.to_dict()
    return LlamaConfig(**kwargs)


class KVCache:
    """Keys/values per attention layer, [batch, kv_heads, tokens, head_dim].

    Only layers with real attention hold an entry; no-op and linear attention
    layers have nothing to cache (the model reference §7.3).
    """

    def __init__(self) -> None:
        self.layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.length = 0  # tokens already processed (the position of the next token)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer in self.layers:
            pk, pv = self.layers[layer]
            k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
        self.layers[layer] = (k, v)
        return k, v

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k, _ in self.layers.values())


class DeciAttention(nn.Module):
    """Grouped-query attention with the layer's own KV-head count (HF `LlamaAttention` maths, eager)."""

    def __init__(self, spec: ModelSpec, layer: LayerSpec):
        super().__init__()
        h, d = spec.hidden_size, spec.head_dim
        self.layer_idx = layer.index
        self.num_heads = spec.num_attention_heads
        self.num_kv_heads = layer.attention_kv_heads
        self.num_key_value_groups = self.num_heads // self.num_kv_heads
        self.head_dim = d
        self.scaling = d**-0.5
        self.q_proj = nn.Linear(h, self.num_heads * d, bias=False)
        self.k_proj = nn.Linear(h, self.num_kv_heads * d, bias=False)
        self.v_proj = nn.Linear(h, self.num_kv_heads * d, bias=False)
        self.o_proj = nn.Linear(self.num_heads * d, h, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        k = repeat_kv(k, self.num_key_value_groups)
        v = repeat_kv(v, self.num_key_value_groups)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.scaling + mask
        probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, s, -1)
        return self.o_proj(out)


class DeciLinearAttention(nn.Module):
    """`replace_with_linear` attention: one hidden x hidden projection (HF `DeciLMLinearAttention`)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.linear_attn = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor, *_args) -> torch.Tensor:
        return self.linear_attn(x)


class DeciLinearMLP(nn.Module):
    """`replace_with_linear` FFN: one hidden x hidden projection (HF `DeciLMLinearMLP`)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.linear_mlp = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_mlp(x)


class DeciDecoderLayer(nn.Module):
    def __init__(self, spec: ModelSpec, layer: LayerSpec):
        super().__init__()
        self.spec = layer
        h, eps = spec.hidden_size, spec.rms_norm_eps
        self.input_layernorm = LlamaRMSNorm(h, eps=eps) if layer.has_input_layernorm else None
        if layer.attention is AttentionKind.ATTENTION:
            self.self_attn: nn.Module | None = DeciAttention(spec, layer)
        elif layer.attention is AttentionKind.LINEAR:
            self.self_attn = DeciLinearAttention(h)
        else:
            self.self_attn = None
        self.post_attention_layernorm = LlamaRMSNorm(h, eps=eps) if layer.has_post_layernorm else None
        if layer.ffn is FFNKind.MLP:
            self.mlp: nn.Module | None = LlamaMLP(llama_config(spec, intermediate_size=layer.intermediate_size))
        elif layer.ffn is FFNKind.LINEAR:
            self.mlp = DeciLinearMLP(h)
        else:
            self.mlp = None

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        # a layer has its norm exactly when it has the sub-block (LayerSpec.has_*_layernorm)
        if self.self_attn is not None:
            assert self.input_layernorm is not None
            h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask, cache)
        if self.mlp is not None:
            assert self.post_attention_layernorm is not None
            h = h + self.mlp(self.post_attention_layernorm(h))
        return h


class DeciModel(nn.Module):
    """The decoder stack (HF prefix `model.`): embeddings, layers, final norm."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList([DeciDecoderLayer(spec, layer) for layer in spec.layers])
        self.norm = LlamaRMSNorm(spec.hidden_size, eps=spec.rms_norm_eps)
        # inv_freq is a non-persistent buffer: it never shows up in state_dict().
        self.rotary_emb = rotary_embedding(spec)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        past = cache.length if cache is not None else 0
        h = self.embed_tokens(input_ids)
        cos, sin, mask = rope_and_mask(self.rotary_emb, h, past)
        for layer in self.layers:
            h = layer(h, cos, sin, mask, cache)
        if cache is not None:
            cache.length = past + input_ids.shape[1]
        return self.norm(h)


def rotary_embedding(spec: ModelSpec) -> LlamaRotaryEmbedding:
    """The model's RoPE module (float32 inv_freq, llama3 scaling from the spec)."""
    return LlamaRotaryEmbedding(llama_config(spec))


def rope_and_mask(rotary_emb: LlamaRotaryEmbedding, h: torch.Tensor, past: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cos, sin, causal mask) for hidden states h [b, s, hidden] that follow `past` cached tokens.

    The one place positions and masks are made: the model's forward and the layer-by-layer FP8
    calibrator (which runs the decoder layers without a DeciModel) both call it.
    """
    b, s = h.shape[:2]
    positions = torch.arange(past, past + s, device=h.device).unsqueeze(0).expand(b, s)
    cos, sin = rotary_emb(h, positions)
    # Query i (absolute position past+i) sees keys 0..past+i.
    keys = torch.arange(past + s, device=h.device)
    allowed = keys.unsqueeze(0) <= (keys[past:].unsqueeze(1))
    mask = torch.zeros(s, past + s, dtype=h.dtype, device=h.device)
    mask.masked_fill_(~allowed, torch.finfo(h.dtype).min)
    return cos, sin, mask


class ReferenceModel(nn.Module):
    """DeciLMForCausalLM in plain PyTorch: `model.*` + `lm_head`, HF tensor names.

    Build it with `from_hf(dir)`, `from_state_dict(spec, tensors)` or
    `from_converted(dir)` (a TensorRT-LLM checkpoint read back into HF names).
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.model = DeciModel(spec)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        if spec.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    # ---- construction ------------------------------------------------------
    @classmethod
    def from_state_dict(
        cls,
        spec: ModelSpec,
        tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
        dtype: torch.dtype = torch.float32,
    ) -> ReferenceModel:
        """Build from HF-named tensors; every tensor of the spec must be present with its shape."""
        items = tensors.items() if isinstance(tensors, Mapping) else tensors
        expected = spec.hf_tensor_shapes()
        state: dict[str, torch.Tensor] = {}
        for name, tensor in items:
            if name.endswith("rotary_emb.inv_freq"):
                continue  # old checkpoints carry it; we recompute it from the config
            if name not in expected:
                raise NemoTrtError(
                    f"tensor {name!r} does not belong to the model described by config.json",
                    "check that config.json (block_configs) belongs to these weights",
                )
            if tuple(tensor.shape) != tuple(expected[name]):
                raise NemoTrtError(
                    f"tensor {name!r} has shape {list(tensor.shape)}, config.json implies {list(expected[name])}",
                    "check that config.json (block_configs) belongs to these weights",
                )
            state[name] = tensor.to(dtype)
        missing = [n for n in expected if n not in state]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise NemoTrtError(f"missing tensor(s) for the reference model: {shown}",
                               "re-create the checkpoint; weights and config.json do not match")
        if spec.tie_word_embeddings:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        # Build on the meta device (no random init of big matrices), then adopt the tensors.
        with torch.device("meta"):
            model = cls(spec)
        model.load_state_dict(state, strict=True, assign=True)
        if spec.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        model = model.to(dtype).eval()
        # Non-persistent buffers (RoPE inv_freq) must be real: rebuild the rotary module, after the
        # cast, so inv_freq stays float32 in a bfloat16 model (as transformers keeps it).
        model.model.rotary_emb = rotary_embedding(spec)
        return model

    @classmethod
    def from_hf(cls, directory: str | Path, dtype: torch.dtype = torch.float32) -> ReferenceModel:
        """Load an HF DeciLM/Llama safetensors checkpoint (validated lazily by HFCheckpoint)."""
        from nemo_trt.build.hf_checkpoint import HFCheckpoint

        with HFCheckpoint(directory) as ckpt:
            ckpt.validate()
            return cls.from_state_dict(ckpt.spec, ckpt.iter_tensors(), dtype=dtype)

    @classmethod
    def from_converted(cls, directory: str | Path, dtype: torch.dtype = torch.float32) -> ReferenceModel:
        """Load a converted TensorRT-LLM checkpoint (TP/PP merged, qkv unfused, FP8 dequantized)."""
        try:
            from nemo_trt.build.convert.reader import read_converted_as_hf
        except ImportError as exc:  # pragma: no cover - depends on the converter landing
            raise NemoTrtError("this nemo-trt has no TensorRT-LLM checkpoint reader",
                               "install a nemo-trt version with `nemo_trt.build.convert.reader`") from exc
        spec, tensors = read_converted_as_hf(directory)
        return cls.from_state_dict(spec, tensors, dtype=dtype)

    # ---- inference ---------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def new_cache(self) -> KVCache:
        return KVCache()

    def hidden_states(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final-norm hidden states [b, s, hidden] (what `lm_head` sees)."""
        return self.model(input_ids, cache)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                last_only: bool = False) -> torch.Tensor:
        """Logits [b, s, vocab] (or [b, 1, vocab] with last_only). With a cache, positions continue after it."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {list(input_ids.shape)}")
        h = self.hidden_states(input_ids, cache)
        if last_only:
            h = h[:, -1:]
        return self.lm_head(h)

    def _check_ids(self, ids: Sequence[int], what: str) -> list[int]:
        ids = [int(t) for t in ids]
        bad = [t for t in ids if not 0 <= t < self.spec.vocab_size]
        if bad:
            raise NemoTrtError(f"{what} holds token id(s) outside the vocabulary (0..{self.spec.vocab_size - 1}): "
                               f"{bad[:5]}", "tokenize with this model's tokenizer")
        return ids

    @torch.inference_mode()
    def logits(self, prompt_ids: Sequence[int]) -> torch.Tensor:
        """Full-sequence logits [s, vocab] in float32, computed without a cache."""
        ids = self._check_ids(prompt_ids, "prompt")
        if not ids:
            raise NemoTrtError("the prompt is empty", "pass at least one token id")
        return self.forward(torch.tensor([ids], dtype=torch.long))[0].float()

    def start_session(self, prompt_ids: Sequence[int], sampling: SamplingParams | None = None,
                      stop_ids: Iterable[int] = (), max_new_tokens: int = 256) -> Session:
        from nemo_trt.reference.sampling import SamplingParams
        from nemo_trt.reference.session import Session

        return Session(self, self._check_ids(prompt_ids, "prompt"), sampling or SamplingParams(),
                       stop_ids, max_new_tokens)

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int,
                 sampling: SamplingParams | None = None, stop_ids: Iterable[int] = ()) -> list[int]:
        """Generated ids (the stop token, when one is hit, is the last element — like HF generate)."""
        session = self.start_session(prompt_ids, sampling, stop_ids, max_new_tokens)
        while session.step() is not None:
            pass
        return list(session.output_ids)
