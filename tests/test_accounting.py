"""Exact accounting pinned to the reference tables.

Figures: shared/reference/model-nemotron-super-49b-v1.md §6-§7 and
trtllm-checkpoint-format.md §4 (470 tensors), §6 (PP table), §7.2 (bytes per TP rank).
"""
from __future__ import annotations

import copy

import pytest

from nemo_trt.build import accounting as acc
from nemo_trt.build.spec import ModelSpec
from nemo_trt.errors import NemoTrtError
from nemo_trt.model_facts import DEFAULT_MODEL, resolve_model


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return ModelSpec.from_path(resolve_model(DEFAULT_MODEL))


def test_total_parameters(spec):
    assert acc.total_parameters(spec) == 49_867_145_216
    assert acc.hf_tensor_count(spec) == 568


def test_parameter_breakdown(spec):
    # §7.1: attention 7,398,752,256; MLP 40,365,981,696; norms 1,064,960; embed + lm_head 2,101,346,304
    lps = [acc.layer_params(spec, layer) for layer in spec.layers]
    attn_mlp = sum(lp.linear for lp in lps)
    assert attn_mlp == 7_398_752_256 + 40_365_981_696
    assert sum(lp.norm for lp in lps) + spec.hidden_size == 1_064_960
    assert 2 * acc.embedding_params(spec) == 2_101_346_304


def test_whole_model_bytes(spec):
    assert acc.weight_bytes(spec, "bf16") == 99_734_290_432
    assert acc.weight_bytes(spec, "fp8") == 51_969_556_480


def test_kv_bytes_per_token(spec):
    assert acc.kv_bytes_per_token(spec, "bf16") == 200_704
    assert acc.kv_bytes_per_token(spec, "fp8") == 100_352
    # one full 131,072-token sequence (§7.3)
    assert acc.kv_bytes_per_token(spec, "bf16") * 131_072 == 26_306_674_688


# trtllm-checkpoint-format.md §7.2, exactly
TP_TABLE = {
    1: (99_734_290_432, 51_969_556_480, 200_704, 100_352),
    2: (50_918_883_328, 27_036_516_352, 100_352, 50_176),
    4: (26_511_179_776, 14_569_996_288, 50_176, 25_088),
    8: (14_307_328_000, 8_336_736_256, 25_088, 12_544),
}


@pytest.mark.parametrize("tp", sorted(TP_TABLE))
def test_per_tp_rank_table(spec, tp):
    bf16, fp8, kv_bf16, kv_fp8 = TP_TABLE[tp]
    for rank in range(tp):  # every TP rank holds the same bytes (even splits, replicated embedding)
        r = acc.rank_accounting(spec, "bf16", tp=tp, rank=rank)
        assert r.weight_bytes == bf16 and r.kv_bytes_per_token == kv_bf16 and r.tensors == 470
        assert (r.tp_rank, r.pp_rank) == (rank, 0)
        f = acc.rank_accounting(spec, "fp8", tp=tp, rank=rank)
        assert f.weight_bytes == fp8 and f.kv_bytes_per_token == kv_fp8


# trtllm-checkpoint-format.md §6 (BF16, TP1): pp -> [(layers, attention layers, params, KV B/token, tensors)]
PP_TABLE = {
    1: [((0, 79), 49, 49_867_145_216, 200_704, 470)],
    2: [((0, 39), 37, 33_502_633_984, 151_552, 272), ((40, 79), 12, 16_364_511_232, 49_152, 198)],
    4: [((0, 19), 17, 16_389_545_984, 69_632, 132), ((20, 39), 20, 17_113_088_000, 81_920, 140),
        ((40, 59), 3, 6_430_056_448, 12_288, 89), ((60, 79), 9, 9_934_454_784, 36_864, 109)],
    8: [((0, 9), 8, 8_248_246_272, 32_768, 65), ((10, 19), 9, 8_141_299_712, 36_864, 67),
        ((20, 29), 10, 8_556_544_000, 40_960, 70), ((30, 39), 10, 8_556_544_000, 40_960, 70),
        ((40, 49), 2, 4_177_625_088, 8_192, 46), ((50, 59), 1, 2_252_431_360, 4_096, 43),
        ((60, 69), 0, 1_113_669_632, 0, 40), ((70, 79), 9, 8_820_785_152, 36_864, 69)],
}
# the table's "BF16 bytes" column, rounded to 0.01 GB
PP_GB = {1: ["99.73"], 2: ["67.01", "32.73"], 4: ["32.78", "34.23", "12.86", "19.87"],
         8: ["16.50", "16.28", "17.11", "17.11", "8.36", "4.50", "2.23", "17.64"]}


@pytest.mark.parametrize("pp", sorted(PP_TABLE))
def test_pp_stage_table(spec, pp):
    stages = acc.all_ranks(spec, "bf16", pp=pp)
    got = [(s.layers, s.attention_layers, s.params, s.kv_bytes_per_token, s.tensors) for s in stages]
    assert got == PP_TABLE[pp]
    assert [f"{s.weight_bytes / 1e9:.2f}" for s in stages] == PP_GB[pp]
    assert all(s.weight_bytes == 2 * s.params for s in stages)  # all-BF16
    assert sum(s.params for s in stages) == 49_867_145_216
    assert [s.pp_rank for s in stages] == list(range(pp))


def test_pp_layer_ranges_tensor_split_rule():
    # torch.tensor_split: the first n % pp ranks get one extra layer
    assert acc.pp_layer_ranges(10, 3) == [(0, 3), (4, 6), (7, 9)]
    assert acc.pp_layer_ranges(80, 3) == [(0, 26), (27, 53), (54, 79)]
    assert acc.pp_layer_ranges(5, 5) == [(i, i) for i in range(5)]
    with pytest.raises(NemoTrtError):
        acc.pp_layer_ranges(4, 5)
    with pytest.raises(NemoTrtError):
        acc.pp_layer_ranges(4, 0)


def test_tp_x_pp_divides_stage_by_tp(spec):
    # §6: "for a TP×PP layout, divide each stage's layer params and KV by TP (embedding replicated)"
    pp_only = acc.all_ranks(spec, "bf16", pp=2)
    both = acc.all_ranks(spec, "bf16", tp=4, pp=2)
    assert [(r.tp_rank, r.pp_rank) for r in both] == [(t, p) for p in range(2) for t in range(4)]
    first = both[0]  # tp 0, pp 0: layers/4 + whole embedding
    v, h = spec.vocab_size, spec.hidden_size
    layer_params_pp0 = pp_only[0].params - v * h
    norms_pp0 = sum(acc.layer_params(spec, layer).norm for layer in spec.layers[0:40])
    assert first.params == (layer_params_pp0 - norms_pp0) // 4 + norms_pp0 + v * h
    assert first.kv_bytes_per_token == pp_only[0].kv_bytes_per_token // 4
    assert both[4].pp_rank == 1 and both[4].layers == (40, 79)


def test_tensor_counts_and_fp8_scales(spec):
    assert acc.rank_accounting(spec, "bf16").tensors == 470
    fp8 = acc.rank_accounting(spec, "fp8", include_fp8_scales=True)
    # 2 scale tensors per FP8 linear (49 qkv + 49 dense + 80*3 ffn) + 49 kv_cache_scaling_factor
    assert fp8.tensors == 470 + 2 * (49 * 2 + 80 * 3) + 49
    assert fp8.weight_bytes == 51_969_556_480 + 4 * (2 * (49 * 2 + 80 * 3) + 49)


def _small(**over) -> ModelSpec:
    cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 8,
           "num_key_value_heads": 2, "num_hidden_layers": 3, "intermediate_size": 96, "vocab_size": 1001}
    cfg.update(over)
    return ModelSpec.from_config(cfg, name="small")


def test_kv_head_duplication_and_vocab_padding():
    spec = _small()  # 2 KV heads, head_dim 8
    assert acc.kv_heads_per_rank(2, 4) == 1 and acc.kv_heads_per_rank(8, 16) == 1 and acc.kv_heads_per_rank(2, 8) == 1
    # tp 4 > 2 kv heads: each rank keeps ceil(2/4)=1 duplicated head -> KV per rank does not shrink below 1 head
    assert acc.kv_bytes_per_token(spec, "bf16", tp=4) == 3 * 2 * 1 * 8 * 2
    assert acc.kv_bytes_per_token(spec, "bf16", tp=8) == acc.kv_bytes_per_token(spec, "bf16", tp=4)
    r = acc.rank_accounting(spec, "bf16", tp=4)
    h, d = 64, 8
    qkv = (8 // 4 + 2 * 1) * d * h
    dense = h * (8 // 4) * d
    mlp = 3 * (96 // 4) * h
    lm_head = acc.pad_vocab_size(1001, 4) // 4 * h  # 1004 / 4 = 251 rows
    assert acc.pad_vocab_size(1001, 4) == 1004
    assert r.params == 3 * (qkv + dense + mlp + 2 * h) + 1001 * h + lm_head + h
    # parallel embedding shards the vocabulary instead of replicating it
    par = acc.rank_accounting(spec, "bf16", tp=4, use_parallel_embedding=True)
    assert r.params - par.params == 1001 * h - 251 * h
    par1 = acc.rank_accounting(spec, "bf16", tp=4, use_parallel_embedding=True, embedding_sharding_dim=1)
    assert r.params - par1.params == 1001 * h - 1001 * (h // 4)


def test_tied_embeddings_counts_once_in_hf_but_lm_head_in_trtllm():
    tied, untied = _small(tie_word_embeddings=True), _small()
    assert acc.total_parameters(untied) - acc.total_parameters(tied) == 1001 * 64
    assert acc.rank_accounting(tied).params == acc.rank_accounting(untied).params


def test_bad_arguments(spec):
    with pytest.raises(NemoTrtError, match="does not divide num_attention_heads=64"):
        acc.rank_accounting(spec, tp=3)
    with pytest.raises(NemoTrtError, match="outside world size"):
        acc.rank_accounting(spec, tp=2, rank=2)
    with pytest.raises(NemoTrtError, match="unknown precision"):
        acc.weight_bytes(spec, "int4")


def test_summary(spec):
    s = acc.summarize(spec, tp_sizes=(1, 2, 3, 4, 8))
    assert sorted(s.per_tp) == [1, 2, 4, 8]  # 3 does not divide 64 heads
    assert s.per_tp[8] == {"bf16": 14_307_328_000, "fp8": 8_336_736_256, "kv_bf16": 25_088, "kv_fp8": 12_544}
    assert (s.total_parameters, s.hf_tensors, s.trtllm_tensors, s.attention_layers) == (49_867_145_216, 568, 470, 49)


def test_linear_replacement_layers_are_fp8(spec):
    cfg = copy.deepcopy(spec.raw_config)
    cfg["block_configs"][6]["attention"].update(no_op=False, replace_with_linear=True)
    cfg["block_configs"][6]["ffn"].update(replace_with_linear=True)
    lin = ModelSpec.from_config(cfg)
    h = 8192
    delta_layer6 = h * h * 2 + h - 3 * 14336 * h  # + linear_attn + linear_mlp + input_layernorm - old MLP
    assert acc.total_parameters(lin) - acc.total_parameters(spec) == delta_layer6
    bf16 = acc.weight_bytes(lin, "bf16") - acc.weight_bytes(spec, "bf16")
    fp8 = acc.weight_bytes(lin, "fp8") - acc.weight_bytes(spec, "fp8")
    assert bf16 == 2 * delta_layer6
    assert fp8 == (2 * h * h - 3 * 14336 * h) + 2 * h  # linears 1 B, the new norm 2 B
    assert acc.rank_accounting(lin).tensors == 470 + 1 + 2 - 3  # norm + 2 linears - 3 MLP tensors
