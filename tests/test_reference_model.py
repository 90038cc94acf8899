"""The PyTorch DeciLM reference model against transformers' LlamaForCausalLM and against itself."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from nemo_trt.build.spec import ModelSpec
from nemo_trt.errors import NemoTrtError
from nemo_trt.reference import ReferenceModel, SamplingParams
from nemo_trt.reference.sampling import filter_logits

ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}
HIDDEN, HEADS, VOCAB = 64, 8, 512


def deci_config(blocks: list[tuple], rope=ROPE, vocab=VOCAB, tie=False) -> dict:
    """blocks: (attention, ffn) with attention in {int n_heads_in_group, 'linear', 'no_op'},
    ffn in {float ffn_mult, 'linear', 'no_op'}."""
    block_configs = []
    for att, ffn in blocks:
        a = {"no_op": att == "no_op", "replace_with_linear": att == "linear",
             "n_heads_in_group": att if isinstance(att, int) else None}
        f = {"no_op": ffn == "no_op", "replace_with_linear": ffn == "linear",
             "ffn_mult": ffn if isinstance(ffn, float) else 1.0}
        block_configs.append({"attention": a, "ffn": f})
    cfg = {
        "architectures": ["DeciLMForCausalLM"], "model_type": "nemotron-nas",
        "hidden_size": HIDDEN, "num_attention_heads": HEADS, "num_hidden_layers": len(blocks),
        "vocab_size": vocab, "max_position_embeddings": 4096, "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": tie,
        "bos_token_id": 1, "eos_token_id": [2], "torch_dtype": "float32", "block_configs": block_configs,
    }
    if rope is not None:
        cfg["rope_scaling"] = rope
    return cfg


def random_tensors(spec: ModelSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in spec.hf_tensor_shapes().items():
        if name.endswith("norm.weight"):
            out[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            out[name] = torch.randn(shape, generator=gen) * (0.5 if "embed" in name else 0.08)
    return out


ALL_KINDS = [(1, 3.0), (4, "no_op"), ("no_op", 1.5), ("linear", 3.0), (8, "linear"),
             ("no_op", "no_op"), (2, 6.0)]


@pytest.fixture(scope="module")
def all_kinds_model() -> ReferenceModel:
    torch.manual_seed(0)
    spec = ModelSpec.from_config(deci_config(ALL_KINDS))
    return ReferenceModel.from_state_dict(spec, random_tensors(spec))


def test_state_dict_keys_are_hf_tensor_names(all_kinds_model):
    spec = all_kinds_model.spec
    sd = all_kinds_model.state_dict()
    assert list(sd) == list(spec.hf_tensor_shapes()) or set(sd) == set(spec.hf_tensor_shapes())
    assert {k: tuple(v.shape) for k, v in sd.items()} == spec.hf_tensor_shapes()
    assert "model.layers.3.self_attn.linear_attn.weight" in sd
    assert "model.layers.4.mlp.linear_mlp.weight" in sd
    assert not any(k.startswith("model.layers.5.") for k in sd)  # fully skipped layer holds nothing
    linears = {n for n, m in all_kinds_model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert "model.layers.0.self_attn.q_proj" in linears and "lm_head" in linears
    # distinct KV widths per layer
    assert sd["model.layers.0.self_attn.k_proj.weight"].shape[0] == 8 * 8
    assert sd["model.layers.1.self_attn.k_proj.weight"].shape[0] == 2 * 8
    assert sd["model.layers.4.self_attn.k_proj.weight"].shape[0] == 1 * 8


def _uniform_pair(rope):
    blocks = [(4, 2.5)] * 3
    cfg = deci_config(blocks, rope=rope)
    spec = ModelSpec.from_config(cfg)
    inter = spec.layers[0].intermediate_size
    lcfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=2,
                       head_dim=HIDDEN // HEADS, intermediate_size=inter, num_hidden_layers=3,
                       max_position_embeddings=4096, rope_theta=500000.0, rms_norm_eps=1e-5,
                       tie_word_embeddings=False, rope_scaling=rope, attn_implementation="eager")
    torch.manual_seed(1)
    hf = LlamaForCausalLM(lcfg).float().eval()
    with torch.no_grad():  # HF init leaves norms at 1 and small weights: perturb to make the test bite
        for name, p in hf.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if "norm" in name else 0.05))
    ours = ReferenceModel.from_state_dict(spec, hf.state_dict())
    return hf, ours


@pytest.mark.parametrize("rope", [ROPE, None], ids=["llama3-rope", "plain-rope"])
def test_logits_match_transformers_llama(rope):
    hf, ours = _uniform_pair(rope)
    ids = torch.randint(0, VOCAB, (2, 150), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        got = ours(ids)
    assert got.shape == (2, 150, VOCAB)
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5), (got - ref).abs().max()
    # incremental decoding (cache) agrees with the full pass
    cache = ours.new_cache()
    with torch.no_grad():
        a = ours(ids[:, :100], cache=cache)
        b = ours(ids[:, 100:101], cache=cache)
        c = ours(ids[:, 101:], cache=cache)
    assert torch.allclose(torch.cat([a, b, c], dim=1), ref, atol=1e-5, rtol=1e-5)


def test_llama3_rope_scaling_is_applied():
    spec = ModelSpec.from_config(deci_config([(4, 2.5)]))
    model = ReferenceModel.from_state_dict(spec, random_tensors(spec))
    plain = LlamaRotaryEmbedding(LlamaConfig(hidden_size=HIDDEN, num_attention_heads=HEADS, rope_theta=500000.0))
    scaled = model.model.rotary_emb.inv_freq
    assert model.model.rotary_emb.rope_type == "llama3"
    assert torch.equal(scaled[0], plain.inv_freq[0])  # high frequencies untouched
    assert torch.allclose(scaled[-1], plain.inv_freq[-1] / 8.0)  # low frequencies divided by factor
    unscaled_spec = ModelSpec.from_config(deci_config([(4, 2.5)], rope=None))
    unscaled = ReferenceModel.from_state_dict(unscaled_spec, random_tensors(spec))
    ids = list(range(3, 200))
    assert not torch.allclose(model.logits(ids), unscaled.logits(ids), atol=1e-4)


def test_block_semantics_by_hand():
    """linear attention + linear FFN, and a fully no-op layer, computed by hand."""
    spec = ModelSpec.from_config(deci_config([("linear", "linear"), ("no_op", "no_op")]))
    t = random_tensors(spec, seed=5)
    model = ReferenceModel.from_state_dict(spec, t)

    def rms(x, w):
        return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)

    ids = [5, 9, 100, 7]
    x = t["model.embed_tokens.weight"][ids]
    h = x + rms(x, t["model.layers.0.input_layernorm.weight"]) @ t["model.layers.0.self_attn.linear_attn.weight"].T
    h = h + rms(h, t["model.layers.0.post_attention_layernorm.weight"]) @ t["model.layers.0.mlp.linear_mlp.weight"].T
    expected = rms(h, t["model.norm.weight"]) @ t["lm_head.weight"].T
    assert torch.allclose(model.logits(ids), expected, atol=1e-5)


def test_cached_greedy_equals_full_recompute(all_kinds_model):
    prompt = [3, 17, 250, 42, 9, 300]
    out = all_kinds_model.generate(prompt, max_new_tokens=24)
    assert len(out) == 24
    seq = list(prompt)
    for _ in range(24):
        seq.append(int(all_kinds_model.logits(seq)[-1].argmax()))
    assert out == seq[len(prompt):]
    # only real attention layers hold a cache
    session = all_kinds_model.start_session(prompt, SamplingParams(), (), 3)
    while session.step() is not None:
        pass
    assert sorted(session.cache.layers) == [0, 1, 4, 6]
    assert session.cache.length == len(prompt) + 2  # last sampled token is never fed back


def test_batch_forward_matches_single(all_kinds_model):
    ids = torch.randint(0, VOCAB, (3, 20), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        batch = all_kinds_model(ids)
        for i in range(3):
            assert torch.allclose(batch[i], all_kinds_model(ids[i:i + 1])[0], atol=1e-5)


def test_stop_token_included_and_finish_reasons(all_kinds_model):
    prompt = [3, 17, 250]
    greedy = all_kinds_model.generate(prompt, max_new_tokens=5)
    stop = greedy[2]
    first = greedy.index(stop)
    out = all_kinds_model.generate(prompt, max_new_tokens=5, stop_ids=[stop])
    assert out == greedy[:first + 1] and out[-1] == stop
    session = all_kinds_model.start_session(prompt, SamplingParams(), [stop], 5)
    tokens = []
    while (tok := session.step()) is not None:
        tokens.append(tok)
    assert tokens == out == session.output_ids and session.finished and session.finish_reason == "stop"
    session = all_kinds_model.start_session(prompt, SamplingParams(), [], 2)
    session.step()
    assert not session.finished
    session.step()
    assert session.finish_reason == "length" and session.step() is None
    assert all_kinds_model.generate(prompt, max_new_tokens=0) == []


def test_sampling_is_deterministic_per_seed(all_kinds_model):
    prompt = [3, 17, 250]
    hot = dict(temperature=1.5, top_k=0, top_p=1.0)
    a = all_kinds_model.generate(prompt, 16, SamplingParams(seed=7, **hot))
    b = all_kinds_model.generate(prompt, 16, SamplingParams(seed=7, **hot))
    c = all_kinds_model.generate(prompt, 16, SamplingParams(seed=8, **hot))
    assert a == b and a != c
    greedy = all_kinds_model.generate(prompt, 16)
    assert all_kinds_model.generate(prompt, 16, SamplingParams(temperature=1.0, top_k=1, seed=3)) == greedy
    assert all_kinds_model.generate(prompt, 16, SamplingParams(temperature=0.7, top_p=1e-6, seed=3)) == greedy


def test_top_k_top_p_filters():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    kept = filter_logits(logits, SamplingParams(temperature=1.0, top_k=2)).isfinite()
    assert kept.tolist() == [True, True, False, False, False]
    probs = torch.softmax(logits, -1)  # 0.636, 0.234, 0.086, ...
    kept = filter_logits(logits, SamplingParams(temperature=1.0, top_p=0.8)).isfinite()
    assert kept.tolist() == [True, True, False, False, False] and probs[0] < 0.8 < probs[:2].sum()
    kept = filter_logits(logits, SamplingParams(temperature=1.0, top_p=0.5)).isfinite()
    assert kept.tolist() == [True, False, False, False, False]


def test_bad_inputs_raise_nemo_trt_errors(all_kinds_model):
    spec = all_kinds_model.spec
    t = random_tensors(spec)
    with pytest.raises(NemoTrtError, match="missing tensor"):
        ReferenceModel.from_state_dict(spec, {k: v for k, v in t.items() if "layers.1." not in k})
    bad = dict(t)
    bad["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(8, HIDDEN)
    with pytest.raises(NemoTrtError, match="shape"):
        ReferenceModel.from_state_dict(spec, bad)
    with pytest.raises(NemoTrtError, match="outside the vocabulary"):
        all_kinds_model.generate([VOCAB + 1], 2)
    with pytest.raises(NemoTrtError, match="empty"):
        all_kinds_model.generate([], 2)
    with pytest.raises(NemoTrtError, match="top_p"):
        SamplingParams(temperature=1.0, top_p=0.0)
    with pytest.raises(NemoTrtError, match="temperature"):
        SamplingParams(temperature=-1.0)


def test_from_hf_round_trip(tmp_path, all_kinds_model):
    from nemo_trt.build.hf_checkpoint import write_hf_checkpoint

    spec = all_kinds_model.spec
    write_hf_checkpoint(tmp_path / "ckpt", spec.raw_config, all_kinds_model.state_dict(), max_shard_bytes=64 * 1024)
    loaded = ReferenceModel.from_hf(tmp_path / "ckpt")
    ids = [3, 4, 5, 6, 7]
    assert torch.equal(loaded.logits(ids), all_kinds_model.logits(ids))
    bf16 = ReferenceModel.from_hf(tmp_path / "ckpt", dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    assert torch.allclose(bf16.logits(ids), all_kinds_model.logits(ids), atol=0.5)
