"""The calibration forward: every calibration prompt through the model, one decoder layer at a time.

Calibration needs, per linear layer, max |input| over the calibration tokens (and the K/V range
per attention layer) — nothing that needs the whole model at once. `forward_layerwise` keeps the
hidden states of the whole calibration batch, builds one decoder layer from the source
checkpoint (the reference model's own `DeciDecoderLayer`, so every block kind behaves exactly as
in the whole model), runs every micro-batch through it, records the ranges, frees it and goes on.
Memory is one layer (on CPU: one linear) plus the activations, whatever the depth.

- Weights come from the converter's reader (`source.SourceWeights`: a copy-on-write mapping of
  one tensor's byte range at a time). On CPU (float32) each linear is materialised in a reused
  float32 buffer just before it runs and dropped just after (a Super-49B layer is 3.4 GB in
  float32; its largest linear 0.94 GB); on CUDA (bfloat16) the layer is put on the device whole,
  one layer at a time.
- The embedding reads only the rows of the tokens in the batch (Super's table is 2.1 GB).
- Prompts are sorted by length and packed into right-padded micro-batches under an activation
  budget. The causal mask alone keeps padding out of every real token's computation (padding
  comes after the real tokens), and ranges are recorded over real tokens only. Positions, masks
  and RoPE come from the reference model's `rope_and_mask`.
- `forward_whole` runs the same micro-batches through a whole `ReferenceModel` (the check, and
  the old memory profile). Both paths run the same ops on tensors of the same shapes, so their
  ranges are bit-identical (tests/test_calibration_layerwise.py). GEMM results on CPU depend on
  the number of rows in the batch, so a per-prompt forward would differ in the last bits; the
  micro-batches are part of the calibration settings for that reason.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from nemo_trt.build.calibration_plan import READ_CHUNK_BYTES, pack
from nemo_trt.build.spec import LayerSpec, ModelSpec

PAD_ID = 0                        # any in-vocabulary id: padded positions are never read by real tokens

LayerCallback = Callable[[int, LayerSpec, int], None]  # (layer index, layer, tokens) after each layer


# ---- micro-batches -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Batch:
    ids: torch.Tensor    # [b, S] token ids, right-padded with PAD_ID
    real: torch.Tensor   # [b, S] bool: True at prompt tokens
    prompts: tuple[int, ...]  # indices into the prompt list

    @property
    def tokens(self) -> int:
        return int(self.real.sum())


def make_batches(token_lists: Sequence[Sequence[int]], spec: ModelSpec, dtype_bytes: int,
                 budget_bytes: int) -> list[Batch]:
    """Right-padded micro-batches, longest prompts first, packed under `budget_bytes` of activations
    (calibration_plan.pack: the planner's memory estimate uses the same groups)."""
    groups = pack([len(t) for t in token_lists], spec, dtype_bytes, budget_bytes)
    batches = []
    for g in groups:
        seq = len(token_lists[g[0]])
        ids = torch.full((len(g), seq), PAD_ID, dtype=torch.long)
        real = torch.zeros((len(g), seq), dtype=torch.bool)
        for row, i in enumerate(g):
            n = len(token_lists[i])
            ids[row, :n] = torch.tensor(list(token_lists[i]), dtype=torch.long)
            real[row, :n] = True
        batches.append(Batch(ids, real, tuple(g)))
    return batches


# ---- range recording ---------------------------------------------------------------------------
def rope_pair_bound(k: torch.Tensor, head_dim: int) -> float:
    """Upper bound of |k| after gpt-neox RoPE: max over (i, i+d/2) pairs of their 2-norm."""
    k = k.float().reshape(-1, head_dim)
    half = head_dim // 2
    return float(torch.sqrt(k[:, :half] ** 2 + k[:, half:] ** 2).max()) if k.numel() else 0.0


class RangeRecorder:
    """max |input| of every linear (HF module name) and the KV range of every attention layer,
    over the real tokens of the micro-batch being run (`real`, set by the driver)."""

    def __init__(self, head_dim: int, kv: bool):
        self.head_dim = head_dim
        self.kv = kv
        self.act_amax: dict[str, float] = {}
        self.kv_amax: dict[int, float] = {}
        self.real: torch.Tensor | None = None

    def _amax(self, x: torch.Tensor) -> float:
        lo, hi = torch.aminmax(x.detach(), dim=-1)  # per token, no |x| copy of the whole tensor
        real = self.real.to(x.device) if self.real is not None else torch.ones(lo.shape, dtype=torch.bool,
                                                                               device=x.device)
        return max(float(hi[real].max()), float(-lo[real].min()))

    def attach(self, root: nn.Module, prefix: str, layer_of: Callable[[str], int]) -> list:
        """Hooks on every nn.Linear under `root` (named `prefix` + its name), lm_head excluded."""
        handles = []
        for name, mod in root.named_modules():
            full = prefix + name
            if not isinstance(mod, nn.Linear) or full == "lm_head":
                continue
            handles.append(mod.register_forward_pre_hook(self._input_hook(full)))
            if self.kv and full.endswith(("self_attn.k_proj", "self_attn.v_proj")):
                handles.append(mod.register_forward_hook(self._kv_hook(layer_of(full), full.endswith("k_proj"))))
        return handles

    def _input_hook(self, name: str):
        def hook(_mod, args):
            self.act_amax[name] = max(self.act_amax.get(name, 0.0), self._amax(args[0]))
        return hook

    def _kv_hook(self, layer: int, is_k: bool):
        def hook(_mod, _args, out):
            if is_k:  # K is cached after RoPE: bound it over every rotation
                real = out.detach()[self.real.to(out.device)] if self.real is not None else out.detach()
                value = rope_pair_bound(real, self.head_dim)
            else:
                value = self._amax(out)
            self.kv_amax[layer] = max(self.kv_amax.get(layer, 0.0), value)
        return hook


def _layer_of(name: str) -> int:
    return int(name.split(".")[2])  # model.layers.<i>.…


# ---- weights, one layer at a time ----------------------------------------------------------------
class LayerLoader:
    """Decoder layers of the source checkpoint, built one at a time on `device` in `dtype`.

    resident=False (CPU): norms now, each linear loaded into a reused buffer by a pre-hook just
    before it runs and released by a post-hook just after — one linear in memory at a time.
    resident=True (CUDA): the whole layer on the device while its micro-batches run.
    """

    def __init__(self, src, device: torch.device, dtype: torch.dtype, *, resident: bool):
        self.src = src
        self.spec: ModelSpec = src.spec
        self.device = device
        self.dtype = dtype
        self.resident = resident
        self._buffer: torch.Tensor | None = None

    # -- reading
    def _tensor(self, name: str) -> torch.Tensor:
        return self.src.read(name).to(device=self.device, dtype=self.dtype)

    def _into_buffer(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        numel = math.prod(shape)
        if self._buffer is None:  # sized for the largest linear once, reused by every linear after
            self._buffer = torch.empty(max_linear_numel(self.spec), dtype=self.dtype, device=self.device)
        out = self._buffer[:numel].view(shape)
        row_bytes = self.src.nbytes(name) // shape[0]
        step = max(1, READ_CHUNK_BYTES // max(1, row_bytes))
        for a in range(0, shape[0], step):
            b = min(a + step, shape[0])
            out[a:b].copy_(self.src.read(name, (a, b)))
        return out

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Embedding lookup reading only the rows of the ids present (exactly nn.Embedding's values)."""
        unique, inverse = torch.unique(ids, return_inverse=True)
        name = "model.embed_tokens.weight"
        rows, runs = [], _runs(unique.tolist())
        for a, b in runs:
            rows.append(self.src.read(name, (a, b)))
        table = torch.cat(rows).to(device=self.device, dtype=self.dtype)
        return nn.functional.embedding(inverse.to(self.device), table)

    def final_norm(self) -> nn.Module:
        from transformers.models.llama.modeling_llama import LlamaRMSNorm

        norm = LlamaRMSNorm(self.spec.hidden_size, eps=self.spec.rms_norm_eps)
        norm.weight = nn.Parameter(self._tensor("model.norm.weight"), requires_grad=False)
        return norm.to(self.device)

    # -- layers
    def layer(self, layer: LayerSpec) -> nn.Module:
        from nemo_trt.reference.model import DeciDecoderLayer

        prefix = f"model.layers.{layer.index}."
        with torch.device("meta"):
            module = DeciDecoderLayer(self.spec, layer)
        names = [n for n in self.spec.hf_tensor_shapes() if n.startswith(prefix)]
        linear = {n[len(prefix):].rsplit(".", 1)[0] for n in names if not n.endswith("layernorm.weight")}
        state = {n[len(prefix):]: self._tensor(n) for n in names
                 if self.resident or n[len(prefix):].rsplit(".", 1)[0] not in linear}
        module.load_state_dict(state, strict=self.resident, assign=True)
        if not self.resident:
            for sub in linear:
                self._lazy(module.get_submodule(sub), prefix + sub + ".weight")
        return module.eval()

    def _lazy(self, mod: nn.Module, weight_name: str) -> None:
        assert isinstance(mod, nn.Linear)
        shape = tuple(mod.weight.shape)

        def load(m, _args):
            m.weight = nn.Parameter(self._into_buffer(weight_name, shape), requires_grad=False)

        def drop(m, _args, _out):
            m.weight = nn.Parameter(torch.empty(shape, device="meta"), requires_grad=False)

        mod.register_forward_pre_hook(load)
        mod.register_forward_hook(drop)

    def release(self) -> None:
        self._buffer = None


def _runs(sorted_ids: list[int]) -> list[tuple[int, int]]:
    """Contiguous [start, stop) runs of sorted ids."""
    runs: list[tuple[int, int]] = []
    for i in sorted_ids:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def max_linear_numel(spec: ModelSpec) -> int:
    return max((math.prod(s) for n, s in spec.hf_tensor_shapes().items()
                if n.startswith("model.layers.") and len(s) == 2), default=0)


# ---- the two forwards ----------------------------------------------------------------------------
def forward_layerwise(loader: LayerLoader, batches: Sequence[Batch], recorder: RangeRecorder,
                      on_layer: LayerCallback | None = None) -> list[torch.Tensor]:
    """Embedding, every decoder layer and the final norm in sequence over all micro-batches;
    returns the final-norm hidden states per micro-batch (what lm_head would see)."""
    from nemo_trt.reference.model import rope_and_mask, rotary_embedding

    spec, dev = loader.spec, loader.device
    rotary = rotary_embedding(spec).to(dev)
    tokens = sum(b.tokens for b in batches)
    with torch.no_grad():
        hidden = [loader.embed(b.ids.to(dev)) for b in batches]
        positional = [rope_and_mask(rotary, h, 0) for h in hidden]
        for layer_spec in spec.layers:
            layer = loader.layer(layer_spec)
            handles = recorder.attach(layer, f"model.layers.{layer_spec.index}.", _layer_of)
            try:
                for i, batch in enumerate(batches):
                    recorder.real = batch.real
                    cos, sin, mask = positional[i]
                    hidden[i] = layer(hidden[i], cos, sin, mask, None)
            finally:
                for h in handles:
                    h.remove()
                del layer
            if on_layer is not None:
                on_layer(layer_spec.index, layer_spec, tokens)
        norm = loader.final_norm()
        out = [norm(h) for h in hidden]
    loader.release()
    return out


def forward_whole(model, batches: Sequence[Batch], recorder: RangeRecorder) -> list[torch.Tensor]:
    """The same micro-batches through a whole ReferenceModel (its DeciModel.forward)."""
    dev = model.lm_head.weight.device
    handles = recorder.attach(model, "", _layer_of)
    try:
        with torch.no_grad():
            out = []
            for batch in batches:
                recorder.real = batch.real
                out.append(model.model(batch.ids.to(dev)))
    finally:
        for h in handles:
            h.remove()
    return out


def whole_model(src, device: torch.device, dtype: torch.dtype):
    """A ReferenceModel from the converter's reader: one source tensor mapped at a time, cast, unmapped."""
    from nemo_trt.reference import ReferenceModel

    tensors = ((n, src.read(n).to(device)) for n in src.spec.hf_tensor_shapes())
    return ReferenceModel.from_state_dict(src.spec, tensors, dtype=dtype).to(device)


def iter_real(hidden: Sequence[torch.Tensor], batches: Sequence[Batch]) -> Iterator[tuple[int, torch.Tensor]]:
    """(prompt index, [tokens, hidden]) of the real tokens, for comparisons."""
    for h, b in zip(hidden, batches):
        for row, prompt in enumerate(b.prompts):
            yield prompt, h[row][b.real[row].to(h.device)]
