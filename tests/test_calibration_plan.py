"""The calibration stage planned and shown: `plan`, `convert --dry-run`, `build --dry-run` and the build's
own calibrate stage (recorded, cached, refused up front when it would not fit)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nemo_trt.build import calibration_plan as cp
from nemo_trt.build.engine import Toolchain
from nemo_trt.build.pipeline import BuildRequest, describe, prepare, run_build
from nemo_trt.cli import main
from nemo_trt.errors import NemoTrtError
from nemo_trt.model_facts import DEFAULT_MODEL

NO_TOOLCHAIN = Toolchain(trtllm_version=None, tensorrt_version=None, trtllm_build=None, gpus=(),
                         notes=("no NVIDIA GPU/driver was found",))


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NEMO_TRT_CACHE", str(tmp_path / "cache"))


def run_json(capsys, *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    rc = main([*args, "--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_plan_shows_the_calibration_stage_for_fp8(capsys):
    rc, plan = run_json(capsys, "plan", "--gpu", "h100x2")
    assert rc == 0
    cal = plan["calibration"]
    assert cal["needed"] and cal["prompts"] == 16 and cal["tokens"] > 16 * 10
    assert (cal["route"], cal["device"]) == ("layerwise", "cpu")
    routes = {(r["route"], r["device"]): r for r in cal["routes"]}
    assert set(routes) == {("layerwise", "cpu"), ("layerwise", "cuda"), ("whole", "cpu"), ("whole", "cuda")}
    assert routes["layerwise", "cpu"]["host_bytes"] < 3e9 < 199e9 < routes["whole", "cpu"]["host_bytes"]
    assert routes["whole", "cuda"]["device_bytes"] > 80e9 and "does not fit one H100" in routes["whole", "cuda"]["note"]
    assert routes["layerwise", "cuda"]["device_bytes"] < 8e9 and not routes["layerwise", "cuda"]["note"]
    assert set(routes["layerwise", "cuda"]["seconds"]) == {"H100"}
    assert all(v > 0 for r in cal["routes"] for v in r["seconds"].values())
    assert any("GFLOP/s" in a for a in cal["assumptions"])
    rc, bf16 = run_json(capsys, "plan", "--gpu", "h100x2", "--precision", "bf16")
    assert rc == 0 and bf16["calibration"]["needed"] is False


def test_plan_text_renders_the_routes(capsys):
    capsys.readouterr()
    assert main(["plan", "--gpu", "h200x1"]) == 0
    out = capsys.readouterr().out
    assert "FP8 calibration" in out and "layerwise" in out and "H200" in out and "assumes" in out


def test_a_modelopt_fp8_source_needs_no_calibration(tmp_path, capsys):
    from fixtures.convert_models import write_modelopt_fp8

    src = write_modelopt_fp8(tmp_path / "fp8")
    rc, plan = run_json(capsys, "plan", "--gpu", "h200x1", "--model", str(src), "--isl", "16", "--osl", "16")
    assert rc == 0 and plan["calibration"]["needed"] is False and "ModelOpt" in plan["calibration"]["why"]


def test_calib_prompts_file_changes_the_token_count(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("short\n" * 3)
    rc, plan = run_json(capsys, "plan", "--gpu", "h100x2", "--calib-prompts", str(prompts))
    assert rc == 0 and plan["calibration"]["prompts"] == 3 and plan["calibration"]["prompt_source"] == str(prompts)


def test_convert_dry_run_writes_nothing_and_shows_the_stage(convert_source, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    args = ["convert", "--checkpoint", str(convert_source), "--output", str(out), "--tp", "2", "--precision", "fp8",
            "--kv-cache-dtype", "fp8", "--dry-run"]
    rc, info = run_json(capsys, *args)
    assert rc == 0 and info["dry_run"] and not out.exists() and not list(tmp_path.glob(".out*"))
    assert info["writes"][-1].endswith("manifest.json") and len(info["writes"]) == 4 and info["bytes"] > 0
    assert info["calibration"]["needed"] and info["calibration"]["tokens"] > 0
    assert info["real_run_here"] == "ok"
    monkeypatch.setattr(cp, "available_host_bytes", lambda: 1000)
    rc, info = run_json(capsys, *args)
    assert rc == 0 and info["real_run_here"].startswith("refused: FP8 calibration (layerwise on cpu")
    capsys.readouterr()
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "dry run" in text and "Calibration routes" in text and "refused" in text


def test_convert_dry_run_of_the_builtin_super49b(capsys):
    rc, info = run_json(capsys, "convert", "--checkpoint", DEFAULT_MODEL, "--output", "/tmp/never", "--gpu", "h100x2",
                        "--dry-run")
    assert rc == 0 and (info["tp"], info["precision"], info["kv_cache_dtype"]) == (2, "fp8", "fp8")
    assert info["real_run_here"].startswith("refused: no *.safetensors")
    assert info["calibration"]["routes"][0]["host_bytes"] < 3e9


def test_build_dry_run_h100x2_shows_calibration_and_its_memory(capsys):
    rc, info = run_json(capsys, "build", "--gpu", "h100x2", "--checkpoint", DEFAULT_MODEL, "--output", "/tmp/w",
                        "--dry-run")
    assert rc == 0
    stages = [s["stage"] for s in info["stages"]]
    assert stages[:3] == ["plan", "calibrate", "convert"]
    cal = info["stages"][1]
    assert cal["prompts"] == 16 and cal["tokens"] > 0 and cal["args"]["method"] == "layerwise"
    est = {(e["route"], e["device"]): e for e in cal["estimates"]}
    assert est["layerwise", "cpu"]["host_bytes"] < 3e9 and est["layerwise", "cuda"]["device_bytes"] > 0
    capsys.readouterr()
    assert main(["build", "--gpu", "h100x2", "--checkpoint", DEFAULT_MODEL, "--output", "/tmp/w", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "calibrate" in text and "layerwise on cpu:" in text and "GB RAM" in text
    rc, bf16 = run_json(capsys, "build", "--gpu", "a100x4", "--checkpoint", DEFAULT_MODEL, "--output", "/tmp/w",
                        "--dry-run")
    assert "calibrate" not in [s["stage"] for s in bf16["stages"]]


# ---- the build's calibrate stage, for real on the tiny model ------------------------------------------
def fp8_request(hf: Path, work: Path, **kw) -> BuildRequest:
    return BuildRequest(gpu="h100x2", checkpoint=hf, output=work, precision="fp8", until="convert", **kw)


def test_build_runs_records_and_reuses_the_calibrate_stage(tiny_checkpoint_dir, tmp_path):
    work = tmp_path / "work"
    summary = run_build(prepare(fp8_request(tiny_checkpoint_dir, work), toolchain=NO_TOOLCHAIN),
                        toolchain=NO_TOOLCHAIN)
    status = {s["stage"]: s["status"] for s in summary["stages"]}
    assert status == {"plan": "done", "calibrate": "done", "convert": "done", "verify": "done"}
    manifest = json.loads((work / "build_manifest.json").read_text())
    cal = manifest["stages"]["calibrate"]
    assert cal["method"] == "layerwise" and cal["device"] == "cpu" and cal["stats"]["tokens_per_s"] > 0
    assert manifest["stages"]["verify"]["ok"] is True
    again = run_build(prepare(fp8_request(tiny_checkpoint_dir, work), toolchain=NO_TOOLCHAIN), toolchain=NO_TOOLCHAIN)
    assert {s["stage"]: s["status"] for s in again["stages"]}["calibrate"] == "cached"


def test_build_refuses_a_calibration_that_does_not_fit_before_any_stage(tiny_checkpoint_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(cp, "available_host_bytes", lambda: 1000)
    work = tmp_path / "never"
    p = prepare(fp8_request(tiny_checkpoint_dir, work), toolchain=NO_TOOLCHAIN)
    assert describe(p, toolchain=NO_TOOLCHAIN)["real_build_here"].startswith("refused: FP8 calibration")
    with pytest.raises(NemoTrtError, match="FP8 calibration") as exc:
        run_build(p, toolchain=NO_TOOLCHAIN)
    assert "--calib-device cuda" in exc.value.fix and cp.PREQUANTIZED in exc.value.fix
    assert not work.exists()


def test_build_calib_device_cuda_without_a_gpu_is_refused_up_front(tiny_checkpoint_dir, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(NemoTrtError, match="no CUDA device"):
        run_build(prepare(fp8_request(tiny_checkpoint_dir, tmp_path / "w", calib_device="cuda"),
                          toolchain=NO_TOOLCHAIN), toolchain=NO_TOOLCHAIN)
    assert not (tmp_path / "w").exists()
