"""Memory planner: pinned figures for every profile × precision × variant, and every error path.

How the pinned figures were hand-checked (planner formula, module docstring of
nemo_trt.build.planner; weight bytes from trtllm-checkpoint-format.md §7.2):

h100x2 bf16 throughput (TP2, max_num_tokens 8192, max_batch_size 256):
  GPU      81,559 MiB                                       = 85,520,809,984 B
  weights  §7.2 TP2 BF16                                    = 50,918,883,328 B
  act      per token 2 B x (3*8192 + (32+2*4)*128 + 3*28672/2) = 145,408 B
           2 x 8192 x 145,408                                = 2,382,364,672
           + 1536 MiB context + 512 MiB comm                 = 2,147,483,648
           + 2 x 256 x 128,256 x 4 B logits                   =   262,668,288  -> 4,792,516,608 B
  KV pool  (85,520,809,984 - 50,918,883,328 - 4,792,516,608) x 0.9 = 26,828,469,043 B
  tokens   26,828,469,043 // 100,352 B/token = 267,343 -> whole 32-token blocks 267,328
  seqs     8,354 blocks // ceil(3072/32)=96 blocks           = 87 (< max_batch_size 256 -> warning)

h200x1 bf16 throughput (TP1, max_batch_size 128):
  GPU 143,771 MiB = 150,754,820,096 B; weights 99,734,290,432 B (§7.2 TP1)
  act 2 x 8192 x 2 x (24,576 + 80*128 + 3*28,672) + 1536 MiB + 2 x 128 x 128,256 x 4 = 5,701,369,856 B
  KV pool (150,754,820,096 - 99,734,290,432 - 5,701,369,856) x 0.9 = 40,787,243,827 B
  tokens 40,787,243,827 // 200,704 = 203,221 -> 203,200; seqs 6,350 // 96 = 66

a100x8 bf16 latency (TP8, max_num_tokens 2048, max_batch_size 8):
  GPU 81,920 MiB = 85,899,345,920 B; weights 14,307,328,000 B (§7.2 TP8)
  act 2 x 2048 x 2 x (24,576 + (8+2)*128 + 3*3,584) + 2048 MiB + 2 x 8 x 128,256 x 4 = 2,455,584,768 B
  KV pool (85,899,345,920 - 14,307,328,000 - 2,455,584,768) x 0.9 = 62,222,789,836 B
  tokens 62,222,789,836 // 25,088 = 2,480,181 -> 2,480,160; seqs 77,505 // 96 = 807 (capped at 8)
The other rows follow the same arithmetic with their own tp, precision and limits.
"""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from nemo_trt.build.planner import BuildSettings, Plan, RankPlan, activation_bytes, make_plan
from nemo_trt.build.profiles import load_profile
from nemo_trt.build.spec import ModelSpec
from nemo_trt.cli import cli, main
from nemo_trt.errors import NemoTrtError
from nemo_trt.model_facts import DEFAULT_MODEL, resolve_model


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return ModelSpec.from_path(resolve_model(DEFAULT_MODEL))


# (profile, precision, variant): (tp, weight B/rank, activation B/rank, KV pool B/rank, KV tokens,
#                                 KV-limited sequences of 2048+1024, concurrency)
PINNED = {
    ("a100x4", "bf16", "throughput"): (4, 26_511_179_776, 4_003_987_456, 49_845_760_819, 993_408, 323, 256),
    ("a100x4", "bf16", "latency"): (4, 26_511_179_776, 2_554_150_912, 51_150_613_708, 1_019_392, 331, 8),
    ("a100x8", "bf16", "throughput"): (8, 14_307_328_000, 3_609_722_880, 61_184_065_536, 2_438_752, 793, 256),
    ("a100x8", "bf16", "latency"): (8, 14_307_328_000, 2_455_584_768, 62_222_789_836, 2_480_160, 807, 8),
    ("h100x2", "bf16", "throughput"): (2, 50_918_883_328, 4_792_516_608, 26_828_469_043, 267_328, 87, 87),
    ("h100x2", "bf16", "latency"): (2, 50_918_883_328, 2_751_283_200, 28_665_579_110, 285_632, 92, 8),
    ("h100x2", "fp8", "throughput"): (2, 27_036_516_352, 4_792_516_608, 48_322_599_321, 963_040, 313, 256),
    ("h100x2", "fp8", "latency"): (2, 27_036_516_352, 2_751_283_200, 50_159_709_388, 999_648, 325, 8),
    ("h200x1", "bf16", "throughput"): (1, 99_734_290_432, 5_701_369_856, 40_787_243_827, 203_200, 66, 66),
    ("h200x1", "bf16", "latency"): (1, 99_734_290_432, 2_608_676_864, 43_570_667_520, 217_088, 70, 8),
    ("h200x1", "fp8", "throughput"): (1, 51_969_556_480, 5_832_704_000, 83_657_303_654, 833_632, 271, 256),
    ("h200x1", "fp8", "latency"): (1, 51_969_556_480, 2_608_676_864, 86_558_928_076, 862_528, 280, 8),
}


@pytest.mark.parametrize("key", sorted(PINNED), ids=lambda k: "-".join(k))
def test_pinned_plans(spec, key):
    name, precision, variant = key
    tp, weights, act, pool, tokens, kv_seqs, conc = PINNED[key]
    plan = make_plan(spec, load_profile(name), precision=precision, variant=variant)
    assert (plan.tp, plan.pp, plan.world_size) == (tp, 1, tp)
    assert len(plan.ranks) == tp
    for r in plan.ranks:
        assert (r.weight_bytes, r.activation_bytes, r.free_bytes_for_kv, r.kv_tokens) == (weights, act, pool, tokens)
        assert r.concurrent_sequences == conc and r.layers == (0, 79)
        assert r.weight_bytes + r.activation_bytes + r.free_bytes_for_kv <= plan.gpu_memory_mib * 1024 * 1024
    assert (plan.kv_tokens, plan.kv_limited_sequences, plan.concurrent_sequences) == (tokens, kv_seqs, conc)
    assert plan.kv_cache_dtype == precision
    assert plan.ranks[0].kv_bytes_per_token * tp == (200_704 if precision == "bf16" else 100_352)
    assert set(plan.build.reasons) == set(BuildSettings.model_fields) - {"reasons"}
    assert all(plan.build.reasons.values()) and plan.reasons["tp"] and plan.reasons["pp"]
    assert plan.build.use_fp8_context_fmha is (precision == "fp8")
    # DeciLM: TensorRT-LLM 0.20's builder drops reduce_fusion ("Overriding reduce_fusion to False"), so no
    # plan claims it; where the profile asks for it (h100x2) the plan says why it is off
    assert plan.build.reduce_fusion is False
    dropped = [o for o in plan.builder_overrides if o["setting"] == "reduce_fusion"]
    assert bool(dropped) is (name == "h100x2")
    if dropped:
        assert "DeciLMForCausalLM cannot use it" in plan.build.reasons["reduce_fusion"]
        assert "Overriding reduce_fusion to False" in plan.build.reasons["reduce_fusion"]
    if variant == "latency":
        assert plan.build.batch_scheduler_policy == "guaranteed_no_evict" and plan.build.max_batch_size == 8
    if precision == "fp8":
        assert plan.build.gemm_plugin == ("disable" if variant == "throughput" else "fp8")
    else:
        assert plan.build.gemm_plugin == "auto"
    Plan.model_validate_json(plan.model_dump_json())  # round-trips


def test_hand_formula_h100x2(spec):
    per_token = 2 * (3 * 8192 + (32 + 2 * 4) * 128 + 3 * 28672 // 2)
    expected = 2 * 8192 * per_token + (1536 + 512) * 2**20 + 2 * 256 * 128256 * 4
    got = activation_bytes(spec, tp=2, max_num_tokens=8192, max_batch_size=256, layers=(0, 79),
                           last_stage=True, world_size=2)
    assert got == expected == 4_792_516_608
    gpu = 81559 * 2**20
    assert int((gpu - 50_918_883_328 - expected) * 0.9) == 26_828_469_043


def test_default_precision_is_recommended(spec):
    assert make_plan(spec, load_profile("h100x2")).precision == "fp8"
    assert make_plan(spec, load_profile("a100x4")).precision == "bf16"


def test_kv_limited_warning(spec):
    plan = make_plan(spec, load_profile("h100x2"), precision="bf16")
    assert any("KV capacity, not the batch size" in w for w in plan.warnings)
    assert not make_plan(spec, load_profile("h100x2"), precision="fp8").warnings


def test_overrides_are_applied_and_explained(spec):
    plan = make_plan(spec, load_profile("h100x2"), precision="bf16", max_seq_len=65536, max_batch_size=32,
                     max_input_len=8192, max_num_tokens=4096, input_len=1000, output_len=7000)
    b = plan.build
    assert (b.max_seq_len, b.max_batch_size, b.max_input_len, b.max_num_tokens) == (65536, 32, 8192, 4096)
    assert b.reasons["max_seq_len"] == "set by --max-seq-len (profile: 32768)"
    # 8000-token sequences = 250 blocks each; smaller activations -> bigger pool than the default plan
    assert plan.kv_limited_sequences == (plan.kv_tokens // 32) // 250
    assert plan.kv_tokens > 267_328


def test_tp_pp_overrides(spec):
    plan = make_plan(spec, load_profile("a100x8"), tp=4, pp=2)
    assert (plan.tp, plan.pp, plan.world_size) == (4, 2, 8)
    assert [r.layers for r in plan.ranks] == [(0, 39)] * 4 + [(40, 79)] * 4
    assert [(r.tp_rank, r.pp_rank) for r in plan.ranks] == [(t, p) for p in range(2) for t in range(4)]
    # first stage holds 37 attention layers, the last 12: per-rank KV = stage KV / TP (§6)
    assert plan.ranks[0].kv_bytes_per_token == 151_552 // 4 and plan.ranks[4].kv_bytes_per_token == 49_152 // 4
    assert plan.kv_tokens == min(r.kv_tokens for r in plan.ranks)
    assert any("PP splits layers by count" in w for w in plan.warnings)
    assert plan.reasons["tp"] == "set by --tp (profile: 8)"
    assert plan.build.reduce_fusion is False
    # TP1 on a TP2 profile: no all-reduce -> reduce_fusion switched off, with the reason
    one = make_plan(spec, load_profile("h100x2"), tp=1)
    assert one.build.reduce_fusion is False and "TP1" in one.build.reasons["reduce_fusion"]
    assert any("uses 1 of the profile's 2 GPUs" in w for w in one.warnings)


def test_pp8_stage_without_attention(spec):
    plan = make_plan(spec, load_profile("a100x8"), tp=1, pp=8)
    stage6 = plan.ranks[6]
    assert stage6.kv_bytes_per_token == 0 and stage6.attention_layers == 0
    assert stage6.kv_tokens == plan.kv_tokens
    assert any("PP stage 6" in w and "no attention layer" in w for w in plan.warnings)
    # the busiest stage (20-29 / 30-39: 40,960 B/token) bounds the engine's KV tokens
    assert plan.kv_tokens == min(r.kv_tokens for r in plan.ranks if r.kv_bytes_per_token)


def test_kv_head_duplication_warning():
    small = ModelSpec.from_config({"architectures": ["LlamaForCausalLM"], "hidden_size": 256,
                                   "num_attention_heads": 8, "num_key_value_heads": 2, "num_hidden_layers": 2,
                                   "intermediate_size": 512, "vocab_size": 1000, "max_position_embeddings": 4096},
                                  name="small")
    plan = make_plan(small, load_profile("a100x8"))
    assert plan.tp == 8 and any("duplicates those K/V heads" in w for w in plan.warnings)
    assert plan.ranks[0].kv_bytes_per_token == 2 * 2 * 1 * 32 * 2  # 1 duplicated KV head per rank
    # profile max_seq_len 32768 > model's 4096: clamped (not an error, since the user did not ask for it)
    assert plan.build.max_seq_len == 4096 and plan.build.max_input_len == 2048
    assert any("clamped" in w for w in plan.warnings)


# ---- errors: NemoTrtError, exit code 2, problem + fix ------------------------------------------

def _err(fn) -> NemoTrtError:
    with pytest.raises(NemoTrtError) as info:
        fn()
    assert info.value.exit_code == 2 and info.value.fix
    return info.value


def test_fp8_on_ampere(spec):
    e = _err(lambda: make_plan(spec, load_profile("a100x4"), precision="fp8"))
    assert "FP8 is not available on NVIDIA A100" in e.problem and "--precision bf16" in e.fix


def test_weights_do_not_fit(spec):
    e = _err(lambda: make_plan(spec, load_profile("h100x2"), precision="bf16", tp=1))
    assert "does not fit h100x2" in e.problem and "99.7 GB of weights" in e.problem
    assert "--precision fp8" in e.fix and "h200x1" in e.fix and "more GPUs" in e.fix


def test_tp_must_divide_heads(spec):
    e = _err(lambda: make_plan(spec, load_profile("a100x8"), tp=3))
    assert "TP 3 does not divide num_attention_heads=64" in e.problem and "1, 2, 4, 8" in e.fix


def test_more_gpus_than_profile(spec):
    e = _err(lambda: make_plan(spec, load_profile("h100x2"), tp=4))
    assert "4 GPUs, but profile h100x2 has 2" in e.problem


def test_max_seq_len_above_model(spec):
    e = _err(lambda: make_plan(spec, load_profile("h200x1"), max_seq_len=131_073))
    assert "exceeds the model's max_position_embeddings (131,072)" in e.problem and "131072" in e.fix


def test_kv_too_small_for_one_sequence(spec):
    # One full 131,072-token BF16 sequence needs 26.3 GB of KV (§7.3). h200x1 BF16 has a 40.8 GB pool: fits.
    # h100x2 BF16 with max_num_tokens 65,536: activations grow to ~21.6 GB per rank, the pool shrinks to
    # (85.5 - 50.9 - 21.6) x 0.9 = ~11.7 GB = ~116k tokens at 100,352 B/token -> less than one sequence.
    plan = make_plan(spec, load_profile("h200x1"), precision="bf16", max_seq_len=131_072, max_input_len=65_536,
                     input_len=2048, output_len=1024)
    assert plan.kv_tokens >= 131_072  # one full-length sequence still fits (26.3 GB of KV)
    e = _err(lambda: make_plan(spec, load_profile("h100x2"), precision="bf16", max_seq_len=131_072,
                               max_input_len=65_536, max_num_tokens=65_536))
    assert "maxTokensInPagedKvCache" in e.problem and "less than one max_seq_len sequence (131,072" in e.problem
    assert "--max-seq-len" in e.fix and "--precision fp8" in e.fix


def test_max_input_len_must_be_below_max_seq_len(spec):
    e = _err(lambda: make_plan(spec, load_profile("h100x2"), max_seq_len=8192, max_input_len=8192))
    assert "max_input_len 8192 must be smaller than max_seq_len 8192" in e.problem
    # without an explicit --max-input-len, a smaller --max-seq-len halves the profile's max_input_len
    plan = make_plan(spec, load_profile("h100x2"), max_seq_len=8192)
    assert plan.build.max_input_len == 4096


def test_workload_must_fit_limits(spec):
    e = _err(lambda: make_plan(spec, load_profile("h100x2"), input_len=20_000))
    assert "--input-len 20000 exceeds max_input_len 16384" in e.problem
    e = _err(lambda: make_plan(spec, load_profile("h100x2"), input_len=16_000, output_len=20_000))
    assert "exceeds max_seq_len 32768" in e.problem
    _err(lambda: make_plan(spec, load_profile("h100x2"), max_batch_size=0))
    _err(lambda: make_plan(spec, load_profile("h100x2"), variant="fast"))
    _err(lambda: make_plan(spec, load_profile("h100x2"), precision="int4"))


# ---- CLI exit codes ---------------------------------------------------------------------------

def test_cli_plan_json_and_errors(capsys):
    assert main(["plan", "--gpu", "h200x1", "--precision", "bf16", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ranks"][0]["kv_tokens"] == 203_200 and data["build"]["max_batch_size"] == 128
    RankPlan.model_validate(data["ranks"][0])
    assert main(["plan", "--gpu", "a100x4", "--precision", "fp8"]) == 2
    assert main(["plan", "--gpu", "h100x2", "--tp", "3"]) == 2
    assert main(["plan", "--gpu", "h100x2", "--max-seq-len", "200000"]) == 2
    assert main(["plan", "--gpu", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown GPU profile 'nope'" in err and "h100x2" in err


def test_cli_plan_table():
    result = CliRunner().invoke(cli, ["plan", "--gpu", "a100x8", "--variant", "latency"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Memory per GPU" in result.output and "2,480,160" in result.output
    assert "0-7" in result.output  # the 8 identical TP ranks are one row
    assert "guaranteed_no_evict" in result.output and "batch_scheduler_policy" in result.output


def test_render_plan_for_other_commands(spec):
    from rich.console import Console

    from nemo_trt.commands.plan import render_plan  # the helper demo / build --dry-run reuse

    console = Console(record=True, width=240)
    plan = make_plan(spec, load_profile("a100x8"), tp=1, pp=8)
    render_plan(plan, console)
    text = console.export_text()
    assert "TP 1 x PP 8 = 8 GPU(s)" in text and "60-69" in text and "1,377,216" in text
    assert "warning: PP stage 6" in text and "activations/rank =" in text
    assert plan.build.reasons["gemm_plugin"] in text
