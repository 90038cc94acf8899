"""CLI of the foundation commands: inspect, profiles, plan (JSON, exit codes, --help examples)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from nemo_trt.build import gpu_detect
from nemo_trt.build.gpu_detect import DetectedGpu
from nemo_trt.build.planner import Plan
from nemo_trt.cli import cli, main


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_plan_h100x2_json():
    result = run("plan", "--gpu", "h100x2", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["tp"] == 2 and data["pp"] == 1 and data["precision"] == "fp8" and len(data["ranks"]) == 2
    assert data["ranks"][0]["weight_bytes"] == 27_036_516_352
    assert Plan.model_validate(data).build.gemm_plugin == "disable"


def test_plan_fp8_on_a100_exits_2(capsys):
    assert main(["plan", "--gpu", "a100x4", "--precision", "fp8"]) == 2
    err = capsys.readouterr().err
    assert "FP8 is not available on NVIDIA A100-SXM4-80GB" in err and "--precision bf16" in err


def test_plan_auto_without_gpu_exits_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(gpu_detect, "_import_nvml", lambda: None)
    assert main(["plan", "--gpu", "auto"]) == 2
    err = capsys.readouterr().err
    assert "no NVIDIA GPU/driver was found" in err and "--gpu PROFILE" in err


def test_plan_auto_with_detected_gpus(monkeypatch):
    monkeypatch.setattr(gpu_detect, "detect_gpus",
                        lambda: [DetectedGpu(i, "NVIDIA A100-SXM4-80GB", 81920, "8.0") for i in range(4)])
    result = run("plan", "--gpu", "auto", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["profile"] == "a100x4"


def test_plan_with_model_path(tmp_path):
    from nemo_trt.model_facts import DEFAULT_MODEL, resolve_model

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text((resolve_model(DEFAULT_MODEL) / "config.json").read_text())
    result = run("plan", "--gpu", "h200x1", "--model", str(tmp_path / "ckpt"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["model"] == "ckpt"
    assert main(["plan", "--gpu", "h200x1", "--model", str(tmp_path / "missing")]) == 2


def test_inspect_super49b():
    result = run("inspect", "llama-3.3-nemotron-super-49b-v1")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "49,867,145,216" in out and "12-41" in out and "no_op" in out
    result = run("inspect", "super49b", "--json")  # alias from serving.yaml
    data = json.loads(result.output)
    assert data["total_parameters"] == 49_867_145_216 and data["weight_bytes"]["fp8"] == 51_969_556_480
    assert data["kv_bytes_per_token"] == {"bf16": 200_704, "fp8": 100_352}
    assert data["per_tp"]["2"]["bf16"] == 50_918_883_328 and data["trtllm_tensors"] == 470
    assert len(data["runs"]) == 25 and data["runs"][3] == {
        "first": 8, "last": 10, "count": 3, "attention": "attention", "num_kv_heads": 8, "ffn": "mlp",
        "intermediate_size": 28672, "ffn_mult": 5.25}


def test_inspect_unknown_model(capsys):
    assert main(["inspect", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


def test_profiles_json_and_table():
    result = run("profiles", "--json")
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert [p["name"] for p in data] == ["a100x4", "a100x8", "h100x2", "h200x1"]
    assert "fp8" not in data[0]["layouts"] and data[2]["gpu"]["memory_mib"] == 81559
    table = run("profiles")
    assert table.exit_code == 0 and "h200x1" in table.output and "143,771" in table.output


def test_profiles_detect(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(gpu_detect, "detect_gpus",
                        lambda: [DetectedGpu(0, "NVIDIA H200", 143771, "9.0")])
    result = run("profiles", "--detect", "--json")
    assert json.loads(result.output) == {"gpus": [{"index": 0, "name": "NVIDIA H200", "memory_mib": 143771,
                                                   "compute_capability": "9.0"}], "profile": "h200x1"}
    text = run("profiles", "--detect")
    assert "matching profile: h200x1" in text.output and "nemo-trt plan --gpu h200x1" in text.output
    monkeypatch.undo()
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(gpu_detect, "_import_nvml", lambda: None)
    assert main(["profiles", "--detect"]) == 2
    assert "no NVIDIA GPU/driver was found" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["inspect", "profiles", "plan"])
def test_help_has_examples(name):
    result = run(name, "--help")
    assert result.exit_code == 0 and "Examples:" in result.output and f"nemo-trt {name}" in result.output
