"""FP8 with pipeline parallelism: what TensorRT-LLM builds as FP8 on each rank is exactly what the rank
file has scales for.

TensorRT-LLM 0.20 decides per rank, from the one checkpoint config.json: quantize_layers()
(tensorrt_llm/quantization/quantize.py @06148676) walks the model built for that rank and turns every
ColumnLinear/RowLinear whose module name matches no `quantization.exclude_modules` pattern
(fnmatch.fnmatchcase; a built-in default list when the field is null) into FP8Linear/FP8RowLinear, which
need `weights_scaling_factor` + `activation_scaling_factor`. The model of a PP stage numbers its layers
from 0 (models/nemotron_nas/model.py @03dd9bb8: DeciLMDecoderLayerList over mapping.pp_layers()), and
Mapping.pp_layers(n) is torch.tensor_split(arange(n), pp)[pp_rank]. The reconstruction below re-implements
that rule from those sources, reading only config.json, and checks each rank file against it.
"""
from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from nemo_trt.build.convert import convert_checkpoint
from nemo_trt.build.verify import verify_checkpoint

# quantize_layers()'s exclude list when the checkpoint gives none
UPSTREAM_DEFAULT_EXCLUDE = ["*lm_head", "*router", "*vocab_embedding", "*position_embedding", "*block_embedding",
                            "*shared_expert_gate", "*fused_a"]
# Linear layers on later stages, at local indices that differ from the global ones.
LATE_LINEAR = [(2, 2.0), (1, "no_op"), ("linear", 2.0), (2, "linear"), ("no_op", 1.3), ("linear", "linear")]


@pytest.fixture(scope="module")
def late_linear_source(tmp_path_factory):
    from fixtures.convert_models import deci_config, write_random

    return write_random(tmp_path_factory.mktemp("fp8pp") / "src", deci_config(LATE_LINEAR))


@pytest.fixture(scope="module")
def fp8_converted(tmp_path_factory, late_linear_source):
    root = tmp_path_factory.mktemp("fp8pp-out")
    cache: dict = {}

    def make(tp: int, pp: int) -> Path:
        if (tp, pp) not in cache:
            out = root / f"tp{tp}-pp{pp}"
            convert_checkpoint(late_linear_source, out, tp=tp, pp=pp, precision="fp8", kv_cache_dtype="fp8",
                               progress=False)
            cache[(tp, pp)] = out
        return cache[(tp, pp)]

    return make


def built_modules(config: dict, rank: int) -> dict[str, str]:
    """Module name -> class kind ('column', 'row', 'other') of DeciLMForCausalLM built for `rank`."""
    mapping = config["mapping"]
    tp, pp = mapping["tp_size"], mapping["pp_size"]
    pp_rank = rank // tp
    layers = torch.tensor_split(torch.arange(config["num_hidden_layers"]), pp)[pp_rank].tolist()
    modules = {"transformer": "other", "transformer.layers": "other"}
    if pp_rank == 0:
        modules["transformer.vocab_embedding"] = "other"  # Embedding
    for local, index in enumerate(layers):
        prefix = f"transformer.layers.{local}"
        layer = config["layer_configs"][index]
        modules[prefix] = "other"
        attention, ffn = layer["attention"]["impl"], layer["ffn"]["impl"]
        if attention == "attention":
            modules |= {f"{prefix}.input_layernorm": "other", f"{prefix}.attention": "other",
                        f"{prefix}.attention.qkv": "column", f"{prefix}.attention.dense": "row"}
        elif attention == "linear":  # LinearAttention(ColumnLinear)
            modules |= {f"{prefix}.input_layernorm": "other", f"{prefix}.attention": "column"}
        else:
            modules |= {f"{prefix}.input_layernorm": "other", f"{prefix}.attention": "other"}  # NoOp
        if ffn == "mlp":  # GatedMLP: fc, gate ColumnLinear; proj RowLinear
            modules |= {f"{prefix}.post_layernorm": "other", f"{prefix}.ffn": "other",
                        f"{prefix}.ffn.fc": "column", f"{prefix}.ffn.gate": "column", f"{prefix}.ffn.proj": "row"}
        elif ffn == "linear":  # LinearFFN(ColumnLinear)
            modules |= {f"{prefix}.post_layernorm": "other", f"{prefix}.ffn": "column"}
        else:
            modules |= {f"{prefix}.post_layernorm": "other", f"{prefix}.ffn": "other"}
    if pp_rank == pp - 1:
        modules |= {"transformer.ln_f": "other", "lm_head": "column"}
    return modules


def fp8_modules(config: dict, rank: int) -> set[str]:
    """quantize_layers(): Column/RowLinear modules no exclude pattern matches."""
    patterns = config["quantization"].get("exclude_modules") or UPSTREAM_DEFAULT_EXCLUDE
    return {name for name, kind in built_modules(config, rank).items()
            if kind in ("column", "row") and not any(fnmatch.fnmatchcase(name, p) for p in patterns)}


def rank_tensors(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_slice(k).get_dtype() for k in f.keys()}


@pytest.mark.parametrize("tp,pp", [(1, 2), (2, 2), (1, 3), (2, 3)])
def test_every_rank_has_scales_for_exactly_what_trtllm_builds_as_fp8(fp8_converted, tp, pp):
    out = fp8_converted(tp, pp)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["quant_algo"] == "FP8"
    later_linear = 0
    for rank in range(tp * pp):
        tensors = rank_tensors(out / f"rank{rank}.safetensors")
        modules = built_modules(config, rank)
        linears = {n for n, kind in modules.items() if kind in ("column", "row")}
        assert {n.rsplit(".", 1)[0] for n in tensors if n.endswith(".weight")} >= linears  # reconstruction sane
        want = fp8_modules(config, rank)
        have = {n.rsplit(".", 1)[0] for n in tensors if n.endswith(".weights_scaling_factor")}
        assert have == want, (f"rank {rank}: TensorRT-LLM builds as FP8 but no scales: {sorted(want - have)}; "
                              f"scales for a BF16 module: {sorted(have - want)}")
        for name in linears:
            fp8 = name in want
            assert tensors[f"{name}.weight"] == ("F8_E4M3" if fp8 else "BF16"), (rank, name)
            assert (f"{name}.activation_scaling_factor" in tensors) is fp8, (rank, name)
        if rank // tp > 0:
            later_linear += sum(1 for n in linears - want if n != "lm_head")
    assert later_linear > 0  # the point of the test: BF16 linear replacements on stages after the first


@pytest.mark.parametrize("tp,pp,expected", [
    (1, 2, ["lm_head", "transformer.layers.0.ffn", "transformer.layers.2.attention", "transformer.layers.2.ffn"]),
    (1, 3, ["lm_head", "transformer.layers.0.attention", "transformer.layers.1.attention",
            "transformer.layers.1.ffn"]),
])
def test_fp8_pp_round_trip_names_stage_local_layers(fp8_converted, late_linear_source, tp, pp, expected):
    out = fp8_converted(tp, pp)
    config = json.loads((out / "config.json").read_text())
    # global layers 2 (linear attention), 3 (linear FFN), 5 (both), numbered per stage
    assert config["quantization"]["exclude_modules"] == expected
    report = verify_checkpoint(late_linear_source, out)
    assert report.ok, report.problems


def test_pp1_names_are_the_global_ones():
    from fixtures.convert_models import deci_config

    from nemo_trt.build.convert.trtllm_config import excluded_modules
    from nemo_trt.build.spec import ModelSpec

    spec = ModelSpec.from_config(deci_config(LATE_LINEAR))
    assert excluded_modules(spec, 1) == ["lm_head", "transformer.layers.2.attention", "transformer.layers.3.ffn",
                                         "transformer.layers.5.attention", "transformer.layers.5.ffn"]
