"""Calibration inputs and the ModelOpt-style config variant of the reader."""
from __future__ import annotations

import json

import pytest
import torch

from nemo_trt.build.convert import convert_checkpoint
from nemo_trt.build.convert.layerwise import rope_pair_bound as _rope_pair_bound
from nemo_trt.build.convert.prompts import DEFAULT_PROMPTS, load_prompts
from nemo_trt.build.convert.reader import read_converted_as_hf, spec_from_trtllm_config
from nemo_trt.build.hf_checkpoint import HFCheckpoint
from nemo_trt.cli import main
from nemo_trt.errors import NemoTrtError


def test_prompt_files_lines_and_jsonl(tmp_path):
    assert load_prompts(None) == list(DEFAULT_PROMPTS) and len(set(DEFAULT_PROMPTS)) >= 12
    lines = tmp_path / "p.txt"
    lines.write_text("first prompt\n\n  second prompt\n")
    assert load_prompts(lines) == ["first prompt", "  second prompt"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    assert load_prompts(jsonl) == ["a", "b"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a"}\n')
    with pytest.raises(NemoTrtError, match="prompt"):
        load_prompts(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(NemoTrtError, match="no prompts"):
        load_prompts(empty)


def test_rope_pair_bound_covers_every_rotation():
    g = torch.Generator().manual_seed(0)
    k = torch.randn(5, 2 * 8, generator=g)  # 2 heads of dim 8
    bound = _rope_pair_bound(k, 8)
    for angle in torch.linspace(0, 6.28, 50):
        c, s = torch.cos(angle), torch.sin(angle)
        x = k.reshape(-1, 8)
        rot = torch.cat([x[:, :4] * c - x[:, 4:] * s, x[:, 4:] * c + x[:, :4] * s], 1)
        assert float(rot.abs().max()) <= bound + 1e-6


def test_calib_prompts_change_the_plan(tmp_path, convert_source, capsys):
    prompts = tmp_path / "calib.txt"
    prompts.write_text("hello there\nwhat is two plus two\n")
    out = tmp_path / "out"
    args = ["convert", "--checkpoint", str(convert_source), "--output", str(out), "--tp", "1", "--precision", "fp8",
            "--calib-prompts", str(prompts), "--json"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["calibration"]["prompts"] == 2 and res["calibration"]["calibrator"] == "reference"
    assert main(args) == 0 and json.loads(capsys.readouterr().out)["up_to_date"] is True
    prompts.write_text("a different prompt\n")
    assert main(args) == 2  # other inputs: refuses without --force
    assert "--force" in capsys.readouterr().err


def test_modelopt_calibrator_missing_is_a_clear_error(tmp_path, convert_source):
    import importlib.util

    if importlib.util.find_spec("modelopt") is not None:
        pytest.skip("nvidia-modelopt is installed here: the error path cannot be reached")
    with pytest.raises(NemoTrtError, match="ModelOpt"):
        convert_checkpoint(convert_source, tmp_path / "out", tp=1, precision="fp8", calibrator="modelopt",
                           progress=False)
    assert not (tmp_path / "out").exists()


def test_reader_accepts_modelopt_block_configs(converted, convert_source):
    out = converted(2)
    cfg = json.loads((out / "config.json").read_text())
    src_cfg = json.loads((convert_source / "config.json").read_text())
    trtllm_only = ("layer_configs", "layer_types", "num_kv_heads_per_layer")
    modelopt_style = {k: v for k, v in cfg.items() if k not in trtllm_only}
    modelopt_style["block_configs"] = src_cfg["block_configs"]

    def kinds(spec):  # ffn_mult is not part of a TensorRT-LLM layer config
        return [(layer.attention, layer.num_kv_heads, layer.ffn, layer.intermediate_size) for layer in spec.layers]

    assert kinds(spec_from_trtllm_config(modelopt_style)) == kinds(spec_from_trtllm_config(cfg))
    spec, tensors = read_converted_as_hf(out)
    assert kinds(spec) == kinds(HFCheckpoint(convert_source).spec)


def test_cuda_device_without_cuda_is_a_clear_error(tmp_path, convert_source, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: covered by test_cuda_calibration_matches_cpu")
    out = tmp_path / "out"
    assert main(["convert", "--checkpoint", str(convert_source), "--output", str(out), "--tp", "1",
                 "--precision", "fp8", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err and not out.exists()


@pytest.mark.gpu
def test_cuda_calibration_matches_cpu(convert_source):
    from nemo_trt.build.convert.calibrate import calibrate

    prompts = list(DEFAULT_PROMPTS[:4])
    cpu = calibrate(convert_source, prompts, device="cpu")
    gpu = calibrate(convert_source, prompts, device="cuda")  # bfloat16 on the GPU
    assert cpu.act_amax.keys() == gpu.act_amax.keys() and cpu.kv_amax.keys() == gpu.kv_amax.keys()
    for name, value in cpu.act_amax.items():
        assert gpu.act_amax[name] == pytest.approx(value, rel=0.05), name
