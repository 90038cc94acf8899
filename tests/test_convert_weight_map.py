"""Pure tests of the name map and split rules against the reference tables (spec only, no weights)."""
from __future__ import annotations

import pytest
import torch

from nemo_trt.build.convert.mapping import RankMapping, pp_layer_range, rank_of
from nemo_trt.build.convert.trtllm_config import make_config
from nemo_trt.build.convert.weight_map import (Split, check_parallelism, dup_kv_heads, merge_ranks, pad_vocab_size,
                                               rank_rules, tensor_for_rank)
from nemo_trt.build.spec import ModelSpec
from nemo_trt.errors import NemoTrtError
from nemo_trt.resources import models_dir


@pytest.fixture(scope="module")
def super49b() -> ModelSpec:
    return ModelSpec.from_path(models_dir() / "llama-3.3-nemotron-super-49b-v1")


def _by_name(rules):
    return {r.name: r for r in rules}


@pytest.mark.parametrize("tp,qkv,dense_in,lm_rows", [(1, 10240, 8192, 128256), (2, 5120, 4096, 64128),
                                                     (4, 2560, 2048, 32064), (8, 1280, 1024, 16032)])
def test_super49b_per_rank_shapes(super49b, tp, qkv, dense_in, lm_rows):
    # trtllm-checkpoint-format.md §7.1
    rules = _by_name(rank_rules(super49b, RankMapping(tp, 1, 0)))
    assert rules["transformer.layers.0.attention.qkv.weight"].shape == (qkv, 8192)
    assert rules["transformer.layers.0.attention.dense.weight"].shape == (8192, dense_in)
    assert rules["lm_head.weight"].shape == (lm_rows, 8192)
    assert rules["transformer.vocab_embedding.weight"].shape == (128256, 8192)  # replicated
    for layer in super49b.layers:
        if layer.intermediate_size:
            fc = rules[f"transformer.layers.{layer.index}.ffn.fc.weight"]
            assert fc.shape == (layer.intermediate_size // tp, 8192)
            assert fc.sources == (f"model.layers.{layer.index}.mlp.gate_proj.weight",)  # fc <- gate_proj
            gate = rules[f"transformer.layers.{layer.index}.ffn.gate.weight"]
            assert gate.sources == (f"model.layers.{layer.index}.mlp.up_proj.weight",)  # gate <- up_proj
            proj = rules[f"transformer.layers.{layer.index}.ffn.proj.weight"]
            assert proj.shape == (8192, layer.intermediate_size // tp)
    assert len(rules) == 470  # §4: 3 + 49*3 + 80*4


def test_super49b_d_ff_table(super49b):
    widths = sorted({layer.intermediate_size for layer in super49b.layers if layer.intermediate_size}, reverse=True)
    assert widths == [28672, 17920, 14336, 7168, 5632, 2816]
    rules = rank_rules(super49b, RankMapping(8, 1, 0))
    assert min(r.shape[0] for r in rules if r.name.endswith("ffn.fc.weight")) == 352  # 2816 / 8


@pytest.mark.parametrize("pp,counts", [(2, [272, 198]), (4, [132, 140, 89, 109]),
                                       (8, [65, 67, 70, 70, 46, 43, 40, 69])])
def test_super49b_pp_stage_tensor_counts(super49b, pp, counts):
    # §6 table: tensors per stage file; layer names are stage-local
    got = [len(rank_rules(super49b, RankMapping(1, pp, s))) for s in range(pp)]
    assert got == counts
    last = rank_rules(super49b, RankMapping(1, pp, pp - 1))
    assert last[0].name.startswith("transformer.layers.0.") and last[-1].name == "lm_head.weight"
    assert not any(r.name == "transformer.vocab_embedding.weight" for r in last) or pp == 1


def test_mapping_rank_layout():
    # Mapping docstring: tp 4, pp 2 -> TP groups [0..3], [4..7]; PP groups [0,4] ...
    m = RankMapping(4, 2)
    assert [(x.tp_rank, x.pp_rank) for x in m.ranks()] == [(r % 4, r // 4) for r in range(8)]
    assert rank_of(3, 1, 4) == 7
    assert [list(pp_layer_range(10, 4, s)) for s in range(4)] == [
        list(x) for x in torch.tensor_split(torch.arange(10), 4)]
    assert pp_layer_range(80, 2, 1) == range(40, 80)
    with pytest.raises(ValueError):
        pp_layer_range(3, 4, 0)


def test_config_json_fields(super49b):
    cfg = make_config(super49b, 2, 1, precision="fp8", kv_cache_dtype="fp8")
    assert cfg["architecture"] == "DeciLMForCausalLM" and cfg["dtype"] == "bfloat16"
    assert cfg["num_key_value_heads"] == 64 and cfg["intermediate_size"] == 32768  # upstream placeholders
    assert cfg["position_embedding_type"] == "rope_gpt_neox" and cfg["rotary_base"] == 500000.0
    assert cfg["rotary_scaling"]["rope_type"] == "llama3" and cfg["max_position_embeddings"] == 131072
    assert cfg["use_parallel_embedding"] is False and cfg["embedding_sharding_dim"] == 0
    assert cfg["logits_dtype"] == "float32" and cfg["norm_epsilon"] == 1e-5
    assert cfg["mapping"]["world_size"] == 2 and cfg["mapping"]["tp_size"] == 2 and "rank" not in cfg["mapping"]
    assert cfg["quantization"]["quant_algo"] == "FP8" and cfg["quantization"]["kv_cache_quant_algo"] == "FP8"
    assert cfg["quantization"]["exclude_modules"] == ["lm_head"]
    assert len(cfg["layer_configs"]) == 80 and len(cfg["layer_types"]) == 80
    assert cfg["num_kv_heads_per_layer"] == [8] * 49
    assert cfg["layer_configs"][0] == {"attention": {"impl": "attention", "num_key_value_heads": 8},
                                       "ffn": {"impl": "mlp", "intermediate_size": 14336}}
    bf16 = make_config(super49b, 1, 1)
    assert bf16["quantization"]["quant_algo"] is None and bf16["quantization"]["kv_cache_quant_algo"] is None


def test_dup_kv_heads_matches_upstream_layout():
    # convert_utils.dup_kv_weight: each head repeated tp/kv times, copies adjacent
    t = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2 * 3, 4)  # 2 heads of dim 3
    d = dup_kv_heads(t, 2, 8)
    assert d.shape == (24, 4)
    for copy in range(4):
        assert torch.equal(d[copy * 3:(copy + 1) * 3], t[:3])
        assert torch.equal(d[12 + copy * 3:12 + (copy + 1) * 3], t[3:])


@pytest.mark.parametrize("tp,kv", [(1, 2), (2, 2), (4, 2), (8, 2), (8, 1), (2, 4)])
def test_qkv_split_and_merge_invert(tp, kv):
    heads, d, h = 8, 4, 16
    g = torch.Generator().manual_seed(tp * 10 + kv)
    q, k, v = (torch.randn(n * d, h, generator=g) for n in (heads, kv, kv))
    from nemo_trt.build.convert.weight_map import Rule
    rule = Rule("x.attention.qkv.weight", ("q", "k", "v"), Split.QKV, (0, h), kv_heads=kv)
    parts = [tensor_for_rank(rule, (q, k, v), tp, r) for r in range(tp)]
    kvr = max(kv // tp, 1)
    assert all(p.shape == ((heads // tp + 2 * kvr) * d, h) for p in parts)
    back = merge_ranks(rule, parts, d, heads, 0)
    assert all(torch.equal(a, b) for a, b in zip(back, (q, k, v)))


@pytest.mark.parametrize("tp", [1, 2, 3, 4, 8])
def test_vocab_padding(tp):
    from nemo_trt.build.convert.weight_map import Rule
    t = torch.randn(250, 4)
    rule = Rule("lm_head.weight", ("lm_head.weight",), Split.VOCAB, (0, 4))
    parts = [tensor_for_rank(rule, (t,), tp, r) for r in range(tp)]
    assert sum(p.shape[0] for p in parts) == pad_vocab_size(250, tp)
    assert torch.equal(torch.cat(parts)[250:], torch.zeros(pad_vocab_size(250, tp) - 250, 4))
    assert torch.equal(merge_ranks(rule, parts, 1, 1, 250)[0], t)


def test_parallelism_refusals(super49b):
    for tp in (1, 2, 4, 8):
        check_parallelism(super49b, tp, 1)
    with pytest.raises(NemoTrtError, match="64 attention heads do not split into 3"):
        check_parallelism(super49b, 3, 1)
    with pytest.raises(NemoTrtError, match="pp 81 exceeds"):
        check_parallelism(super49b, 1, 81)
    from fixtures.convert_models import llama_config
    odd = ModelSpec.from_config(llama_config(hidden=96, heads=12, kv=3, inter=200))
    with pytest.raises(NemoTrtError, match="3 KV heads neither divide nor are divided by tp 2"):
        check_parallelism(odd, 2, 1)
    with pytest.raises(NemoTrtError, match="intermediate size 200 is not divisible by tp 3"):
        check_parallelism(odd, 3, 1)


def test_llama_names_use_mlp_prefix():
    from fixtures.convert_models import llama_config
    spec = ModelSpec.from_config(llama_config())
    names = [r.name for r in rank_rules(spec, RankMapping(2, 1, 0))]
    assert "transformer.layers.0.mlp.fc.weight" in names and not any(".ffn." in n for n in names)
    cfg = make_config(spec, 2, 1)
    assert cfg["architecture"] == "LlamaForCausalLM" and cfg["num_key_value_heads"] == 2 and "layer_configs" not in cfg
