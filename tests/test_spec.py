"""ModelSpec parsing: the real Super-49B config, a Llama config, and every bad input."""
from __future__ import annotations

import copy
import json

import pytest

from nemo_trt.build.spec import AttentionKind, FFNKind, ModelSpec, ffn_mult_to_intermediate_size
from nemo_trt.errors import NemoTrtError
from nemo_trt.model_facts import DEFAULT_MODEL, resolve_model


@pytest.fixture(scope="module")
def super_cfg() -> dict:
    return json.loads((resolve_model(DEFAULT_MODEL) / "config.json").read_text())


def llama_cfg(**extra) -> dict:
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
        "num_attention_heads": 64, "num_key_value_heads": 8, "num_hidden_layers": 80,
        "intermediate_size": 28672, "vocab_size": 128256, "max_position_embeddings": 131072,
        "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
        "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
    }
    cfg.update(extra)
    return cfg


def test_super49b_layers_match_reference(super_cfg):
    spec = ModelSpec.from_config(super_cfg, name="super")
    assert spec.is_deci and spec.num_layers == 80 and spec.head_dim == 128
    attn = [layer.index for layer in spec.attention_layers]
    # model-nemotron-super-49b-v1.md §5: attention layers 0-5, 8-10, 12-41, 52, 71-79
    assert attn == [*range(0, 6), *range(8, 11), *range(12, 42), 52, *range(71, 80)]
    assert len(attn) == 49 and set(spec.kv_head_counts) == {8}
    assert all(layer.ffn is FFNKind.MLP for layer in spec.layers)
    sizes = sorted({layer.intermediate_size for layer in spec.layers})
    assert sizes == [2816, 5632, 7168, 14336, 17920, 28672]
    assert spec.layers[6].attention is AttentionKind.NO_OP and not spec.layers[6].has_input_layernorm
    assert spec.layers[11].intermediate_size == 17920
    assert spec.rope_scaling.to_dict()["factor"] == 8.0
    assert spec.eos_token_ids == (128001, 128008, 128009)
    assert len(spec.hf_tensor_shapes()) == 568  # 3 + 49*5 + 80*4 (§6)
    assert len(spec.run_lengths()) == 25  # rows of the §5 table


@pytest.mark.parametrize("mult,size", [(5.25, 28672), (3.28125, 17920), (2.625, 14336), (1.3125, 7168),
                                       (1.0, 5632), (0.5, 2816)])
def test_ffn_mult_rule(mult, size):
    assert ffn_mult_to_intermediate_size(mult, 8192) == size


def test_to_trtllm_layer_config(super_cfg):
    spec = ModelSpec.from_config(super_cfg)
    assert spec.layers[0].to_trtllm() == {"attention": {"impl": "attention", "num_key_value_heads": 8},
                                          "ffn": {"impl": "mlp", "intermediate_size": 14336}}
    assert spec.layers[42].to_trtllm()["attention"] == {"impl": "no_op", "num_key_value_heads": None}


def test_linear_replacement_blocks(super_cfg):
    cfg = copy.deepcopy(super_cfg)
    cfg["block_configs"][3]["attention"].update(replace_with_linear=True)
    cfg["block_configs"][4]["ffn"].update(replace_with_linear=True)
    cfg["block_configs"][5]["ffn"].update(no_op=True)
    spec = ModelSpec.from_config(cfg)
    assert spec.layers[3].attention is AttentionKind.LINEAR and spec.layers[3].num_kv_heads is None
    assert spec.layers[4].ffn is FFNKind.LINEAR and spec.layers[4].intermediate_size is None
    assert spec.layers[5].ffn is FFNKind.NO_OP and not spec.layers[5].has_post_layernorm
    shapes = spec.hf_tensor_shapes()
    assert shapes["model.layers.3.self_attn.linear_attn.weight"] == (8192, 8192)
    assert shapes["model.layers.4.mlp.linear_mlp.weight"] == (8192, 8192)
    assert "model.layers.5.mlp.gate_proj.weight" not in shapes


def test_llama_config_is_uniform():
    spec = ModelSpec.from_config(llama_cfg(), name="llama-70b")
    assert spec.architecture == "LlamaForCausalLM" and not spec.is_deci
    assert len(spec.attention_layers) == 80
    assert {(layer.num_kv_heads, layer.intermediate_size) for layer in spec.layers} == {(8, 28672)}
    assert len(spec.run_lengths()) == 1


def test_from_path_dir_and_file(tmp_path, super_cfg):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(super_cfg))
    assert ModelSpec.from_path(tmp_path / "m").name == "m"
    assert ModelSpec.from_path(tmp_path / "m" / "config.json").num_layers == 80


# ---- bad inputs: each is a NemoTrtError naming the problem and a fix ----------------------------

def _attn(cfg, layer=0, **kv):
    cfg["block_configs"][layer]["attention"].update(kv)
    return cfg


@pytest.mark.parametrize("key,value,needle", [
    ("sparsify", {"sparsity": 0.5}, "sparsify"),
    ("num_sink_tokens", 4, "num_sink_tokens"),
    ("unshifted_sink", True, "unshifted_sink"),
    ("use_prefill_window_in_sink_attention", True, "use_prefill_window_in_sink_attention"),
    ("window_length", 4096, "window_length"),
])
def test_unsupported_attention_features(super_cfg, key, value, needle):
    with pytest.raises(NemoTrtError) as err:
        ModelSpec.from_config(_attn(copy.deepcopy(super_cfg), 2, **{key: value}))
    assert needle in err.value.problem and "layer 2" in err.value.problem and err.value.fix
    assert err.value.exit_code == 2


def test_ffn_sparsify(super_cfg):
    cfg = copy.deepcopy(super_cfg)
    cfg["block_configs"][7]["ffn"]["sparsify"] = {"sparsity": 0.5}
    with pytest.raises(NemoTrtError, match="layer 7 uses ffn.sparsify"):
        ModelSpec.from_config(cfg)


@pytest.mark.parametrize("field", ["hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size"])
def test_missing_required_field(super_cfg, field):
    cfg = copy.deepcopy(super_cfg)
    del cfg[field]
    with pytest.raises(NemoTrtError, match=f"required field '{field}' is missing"):
        ModelSpec.from_config(cfg)


def test_wrong_field_type(super_cfg):
    with pytest.raises(NemoTrtError, match="'hidden_size' must be int"):
        ModelSpec.from_config({**super_cfg, "hidden_size": "8192"})
    with pytest.raises(NemoTrtError, match="must be int"):
        ModelSpec.from_config({**super_cfg, "num_hidden_layers": True})


def test_llama_missing_intermediate_size():
    cfg = llama_cfg()
    del cfg["intermediate_size"]
    with pytest.raises(NemoTrtError, match="intermediate_size"):
        ModelSpec.from_config(cfg)


def test_block_configs_problems(super_cfg):
    cfg = copy.deepcopy(super_cfg)
    cfg["block_configs"] = cfg["block_configs"][:79]
    with pytest.raises(NemoTrtError, match="79 entries but num_hidden_layers is 80"):
        ModelSpec.from_config(cfg)
    cfg = copy.deepcopy(super_cfg)
    del cfg["block_configs"]
    with pytest.raises(NemoTrtError, match="no block_configs"):
        ModelSpec.from_config(cfg)
    cfg = copy.deepcopy(super_cfg)
    cfg["block_configs"][0] = {"attention": {}}
    with pytest.raises(NemoTrtError, match=r"block_configs\[0\] must have 'attention' and 'ffn'"):
        ModelSpec.from_config(cfg)


def test_old_decilm_7b_config(super_cfg):
    cfg = copy.deepcopy(super_cfg)
    del cfg["block_configs"]
    cfg["num_key_value_heads_per_layer"] = [8] * 80
    with pytest.raises(NemoTrtError, match="DeciLM-7B"):
        ModelSpec.from_config(cfg)


def test_bad_heads_in_group_and_ffn_mult(super_cfg):
    with pytest.raises(NemoTrtError, match="n_heads_in_group=7"):
        ModelSpec.from_config(_attn(copy.deepcopy(super_cfg), 0, n_heads_in_group=7))
    cfg = copy.deepcopy(super_cfg)
    cfg["block_configs"][1]["ffn"]["ffn_mult"] = None
    with pytest.raises(NemoTrtError, match="ffn_mult=None"):
        ModelSpec.from_config(cfg)


def test_unsupported_architecture():
    with pytest.raises(NemoTrtError, match="MistralForCausalLM.*not supported") as err:
        ModelSpec.from_config(llama_cfg(architectures=["MistralForCausalLM"], model_type="mistral"))
    assert "DeciLMForCausalLM" in err.value.fix


def test_unsupported_rope_and_bias():
    with pytest.raises(NemoTrtError, match="rope_scaling type 'yarn'"):
        ModelSpec.from_config(llama_cfg(rope_scaling={"rope_type": "yarn", "factor": 4.0}))
    with pytest.raises(NemoTrtError, match="rope_scaling is missing 'low_freq_factor'"):
        ModelSpec.from_config(llama_cfg(rope_scaling={"rope_type": "llama3", "factor": 8.0}))
    with pytest.raises(NemoTrtError, match="attention_bias"):
        ModelSpec.from_config(llama_cfg(attention_bias=True))


def test_kv_heads_must_divide_heads():
    with pytest.raises(NemoTrtError, match="num_key_value_heads 7 does not divide"):
        ModelSpec.from_config(llama_cfg(num_key_value_heads=7))


def test_bad_files(tmp_path):
    with pytest.raises(NemoTrtError, match="no config.json"):
        ModelSpec.from_path(tmp_path)
    (tmp_path / "config.json").write_text('{"hidden_size": 8192,')
    with pytest.raises(NemoTrtError, match="not valid JSON") as err:
        ModelSpec.from_path(tmp_path)
    assert "truncated" in err.value.fix
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(NemoTrtError, match="must hold a JSON object"):
        ModelSpec.from_path(tmp_path)
    (tmp_path / "config.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(NemoTrtError, match="not valid JSON"):
        ModelSpec.from_path(tmp_path)


def test_null_optional_keys_mean_unset(super_cfg):
    cfg = _attn(copy.deepcopy(super_cfg), 0, unshifted_sink=None, use_prefill_window_in_sink_attention=None)
    assert ModelSpec.from_config(cfg).layers[0].attention is AttentionKind.ATTENTION


@pytest.mark.parametrize("mutate,needle", [
    (lambda c: c["block_configs"][0].update(attention=None), "must be JSON objects"),
    (lambda c: c["block_configs"][0].update(ffn=[1]), "must be JSON objects"),
    (lambda c: c.update(rope_scaling="llama3"), "rope_scaling must be an object"),
])
def test_malformed_structures(super_cfg, mutate, needle):
    cfg = copy.deepcopy(super_cfg)
    mutate(cfg)
    with pytest.raises(NemoTrtError, match=needle):
        ModelSpec.from_config(cfg)
