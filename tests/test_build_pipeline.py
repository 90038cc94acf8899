"""`nemo-trt build` orchestration with the REAL converter, verifier and repository writer.

Only the GPU toolchain is replaced: a `Toolchain` says which TensorRT-LLM / GPUs are
"present" (injected, as `detect_toolchain()` would report them) and
tests/fixtures/fake_trtllm_build.py stands in for `trtllm-build` (records its argv,
checks the rank files, writes placeholder rank engines + an engine config.json).

One conversion + verification of the tiny DeciLM (random weights) is made once for
the module with `--until convert` and no toolchain at all (the CPU-box half of the
CPU-box -> GPU-box story); every scenario copies that work directory.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

from nemo_trt.build.engine import Toolchain
from nemo_trt.build.engine_manifest import check_runtime_compat, read_engine_manifest
from nemo_trt.hashing import sha256_file
from nemo_trt.build.gpu_detect import DetectedGpu
from nemo_trt.build.pipeline import BuildRequest, prepare, preflight, run_build
from nemo_trt.build.trtllm_target import load_target
from nemo_trt.errors import NemoTrtError

HAVE_TRTLLM = importlib.util.find_spec("tensorrt_llm") is not None
FAKE_BUILD = Path(__file__).parent / "fixtures" / "fake_trtllm_build.py"
H100 = "NVIDIA H100 80GB HBM3"
NO_TOOLCHAIN = Toolchain(trtllm_version=None, tensorrt_version=None, trtllm_build=None, gpus=(),
                         notes=("no NVIDIA GPU/driver was found",))


def gpus(n: int, name: str = H100, mib: int = 81559, cap: str = "9.0") -> tuple[DetectedGpu, ...]:
    return tuple(DetectedGpu(i, name, mib, cap) for i in range(n))


def toolchain(n_gpus: int = 2, version: str = "0.20.0", **gpu_kw) -> Toolchain:
    return Toolchain(trtllm_version=version, tensorrt_version="10.10.0.31", trtllm_build=str(FAKE_BUILD),
                     gpus=gpus(n_gpus, **gpu_kw))


def request(hf: Path, out: Path, **kw) -> BuildRequest:
    base = dict(gpu="h100x2", checkpoint=hf, output=out, precision="bf16")
    base.update(kw)
    return BuildRequest(**base)


def stage_status(summary: dict) -> dict[str, str]:
    return {s["stage"]: s["status"] for s in summary["stages"]}


def no_partials(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.endswith(".partial")]


@pytest.fixture(scope="module")
def hf(tmp_path_factory) -> Path:
    from nemo_trt.build.tiny import write_tiny_checkpoint

    path = tmp_path_factory.mktemp("hf") / "tiny"
    write_tiny_checkpoint(path, train=False)
    return path


@pytest.fixture(scope="module")
def cpu_box_work(hf, tmp_path_factory) -> Path:
    """WORKDIR after `nemo-trt build --until convert` on a machine without TensorRT-LLM or GPUs."""
    work = tmp_path_factory.mktemp("cpu-box") / "work"
    p = prepare(request(hf, work, until="convert"), toolchain=NO_TOOLCHAIN)
    summary = run_build(p, toolchain=NO_TOOLCHAIN)
    assert stage_status(summary) == {"plan": "done", "convert": "done", "verify": "done"}
    return work


@pytest.fixture()
def recorded(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "argv.jsonl"
    monkeypatch.setenv("FAKE_TRTLLM_BUILD_RECORD", str(path))
    monkeypatch.delenv("FAKE_TRTLLM_BUILD_FAIL", raising=False)
    return path


def copy_work(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def runs(record: Path) -> list[list[str]]:
    return [json.loads(line)["argv"] for line in record.read_text().splitlines()] if record.exists() else []


def test_cpu_box_prepares_checkpoint_for_the_gpu_box(cpu_box_work):
    manifest = json.loads((cpu_box_work / "build_manifest.json").read_text())
    assert manifest["stages"]["verify"]["ok"] is True
    assert manifest["stages"]["verify"]["checkpoint_fingerprint"] == manifest["stages"]["convert"]["fingerprint"]
    assert sorted(p.name for p in (cpu_box_work / "checkpoint").glob("rank*.safetensors")) == [
        "rank0.safetensors", "rank1.safetensors"]
    assert not (cpu_box_work / "engines").exists() and not (cpu_box_work / "repository").exists()
    assert json.loads((cpu_box_work / "plan.json").read_text())["tp"] == 2


def test_gpu_box_build_reuses_conversion_then_caches_engines(cpu_box_work, hf, tmp_path, recorded):
    work = copy_work(cpu_box_work, tmp_path / "work")
    tc = toolchain()
    summary = run_build(prepare(request(hf, work), toolchain=tc), toolchain=tc)
    assert stage_status(summary) == {"plan": "done", "convert": "cached", "verify": "cached",
                                     "engine": "done", "repo": "done"}
    # the exact command, run once, into a temporary sibling that became engines/
    (argv,) = runs(recorded)
    out_at = argv.index("--output_dir") + 1
    assert Path(argv[out_at]).parent == work and argv[out_at].endswith(".partial")
    em = read_engine_manifest(work / "engines")
    expected = ["trtllm-build", *argv[:out_at], str(work / "engines"), *argv[out_at + 1:]]  # argv lacks argv[0]
    assert em.build_command == expected
    assert em.trtllm_version == "0.20.0" and em.tensorrt_version == "10.10.0.31"
    assert em.container_image == load_target().container_image
    assert (em.profile, em.precision, em.tp, em.pp, em.world_size) == ("h100x2", "bf16", 2, 1, 2)
    assert em.source_fingerprint and em.checkpoint_fingerprint
    assert [(e.name, e.sha256) for e in em.engines] == [
        (f"rank{r}.engine", sha256_file(work / "engines" / f"rank{r}.engine")) for r in range(2)]
    assert em.plan["build"]["max_batch_size"] == 256
    # the manifest never claims what the builder drops: h100x2 asks for reduce_fusion, DeciLM cannot have it
    # (the stand-in applies builder.py's override on its own); the engine's config.json agrees with the plan
    assert em.plan["build"]["reduce_fusion"] is False and em.engine_settings["reduce_fusion"] is False
    assert [o["setting"] for o in em.builder_overrides] == ["reduce_fusion"]
    assert em.unpredicted_overrides == {}
    assert em.build_command[em.build_command.index("--reduce_fusion") + 1] == "disable"
    assert check_runtime_compat(work / "engines", runtime_version="0.20.0") == "0.20.0"
    # the repository serves these engines with the plan's runtime settings
    pbtxt = (work / "repository" / "tensorrt_llm" / "config.pbtxt").read_text()
    assert str(work / "engines") in pbtxt and '"enable_kv_cache_reuse" value: { string_value: "true"' in pbtxt
    assert no_partials(work) == []

    # rerun: nothing rebuilt (another --workers count builds the same engines)
    summary = run_build(prepare(request(hf, work, workers=1), toolchain=tc), toolchain=tc)
    assert stage_status(summary)["engine"] == "cached" and len(runs(recorded)) == 1

    # a changed setting rebuilds the engines (and only them)
    summary = run_build(prepare(request(hf, work, max_batch_size=64), toolchain=tc), toolchain=tc)
    assert stage_status(summary) == {"plan": "done", "convert": "cached", "verify": "cached",
                                     "engine": "done", "repo": "done"}
    assert len(runs(recorded)) == 2
    engine_config = json.loads((work / "engines" / "config.json").read_text())
    assert engine_config["build_config"]["max_batch_size"] == 64

    # another TensorRT-LLM in the container: the engines are not current any more
    with pytest.raises(NemoTrtError, match="TensorRT-LLM 0.21.0"):
        run_build(prepare(request(hf, work), toolchain=toolchain(version="0.21.0")),
                  toolchain=toolchain(version="0.21.0"))


def test_failed_engine_build_keeps_checkpoint_and_leaves_nothing_half_written(cpu_box_work, hf, tmp_path,
                                                                              recorded, monkeypatch):
    work = copy_work(cpu_box_work, tmp_path / "work")
    tc = toolchain()
    monkeypatch.setenv("FAKE_TRTLLM_BUILD_FAIL", "1")
    with pytest.raises(NemoTrtError) as exc:
        run_build(prepare(request(hf, work), toolchain=tc), toolchain=tc)
    assert exc.value.exit_code == 1
    assert "CUDA out of memory" in exc.value.problem and "trtllm-build.log" in exc.value.problem
    assert "resumes at the engine stage" in exc.value.fix
    assert not (work / "engines").exists() and not (work / "repository").exists()
    assert no_partials(work) == []
    assert "CUDA out of memory" in (work / "logs" / "trtllm-build.log").read_text()

    monkeypatch.delenv("FAKE_TRTLLM_BUILD_FAIL")
    summary = run_build(prepare(request(hf, work), toolchain=tc), toolchain=tc)
    assert stage_status(summary) == {"plan": "done", "convert": "cached", "verify": "cached",
                                     "engine": "done", "repo": "done"}


def test_interrupted_engine_build_is_stopped_and_cleaned(cpu_box_work, hf, tmp_path, recorded):
    work = copy_work(cpu_box_work, tmp_path / "work")
    tc = toolchain()

    def interrupt(line: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_build(prepare(request(hf, work), toolchain=tc), toolchain=tc, on_build_line=interrupt)
    assert not (work / "engines").exists() and no_partials(work) == []
    assert (work / "checkpoint" / "manifest.json").is_file()


def test_refusals_happen_before_any_work(hf, tmp_path):
    target = load_target()
    work = tmp_path / "never-written"
    with pytest.raises(NemoTrtError) as exc:
        run_build(prepare(request(hf, work), toolchain=NO_TOOLCHAIN), toolchain=NO_TOOLCHAIN)
    msg = str(exc.value)
    for needle in ("TensorRT-LLM", "trtllm-build", "NVIDIA GPUs", target.container_image, "--dry-run",
                   "--until convert"):
        assert needle in msg, needle
    assert not work.exists()

    def refused(tc: Toolchain, match: str, **kw) -> None:
        p = prepare(request(hf, work, **kw), toolchain=tc)
        with pytest.raises(NemoTrtError, match=match):
            preflight(p, tc)
        preflight(prepare(request(hf, work, force=True, **kw), toolchain=tc), tc)  # --force accepts it

    refused(toolchain(n_gpus=1), "1 GPU")
    refused(toolchain(name="NVIDIA A100-SXM4-80GB", mib=81920, cap="8.0"), "GPU model differs")
    refused(toolchain(mib=40000), "40000 MiB")
    refused(toolchain(version="0.19.0"), "nemo-trt targets 0.20.0")
    preflight(prepare(request(hf, work), toolchain=toolchain(n_gpus=8)), toolchain(n_gpus=8))  # more GPUs: fine
    assert not work.exists()


def test_disk_space_is_checked_up_front(hf, tmp_path, monkeypatch):
    from nemo_trt.build import pipeline

    monkeypatch.setattr(pipeline.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, 1000))
    with pytest.raises(NemoTrtError, match="GB free"):
        run_build(prepare(request(hf, tmp_path / "w", until="convert"), toolchain=NO_TOOLCHAIN),
                  toolchain=NO_TOOLCHAIN)
    assert not (tmp_path / "w").exists()


@pytest.mark.skipif(HAVE_TRTLLM, reason="this machine has TensorRT-LLM: a real build would not be refused")
def test_cli_refuses_a_real_build_without_trtllm_and_runs_until_convert(cpu_box_work, hf, tmp_path, capsys):
    from nemo_trt.cli import main

    capsys.readouterr()
    rc = main(["build", "--gpu", "h100x2", "--checkpoint", str(hf), "--output", str(tmp_path / "w"),
               "--precision", "bf16"])
    err = capsys.readouterr().err
    assert rc == 2 and load_target().container_image in err and "--until convert" in err
    assert not (tmp_path / "w").exists()

    work = copy_work(cpu_box_work, tmp_path / "work")
    rc = main(["build", "--gpu", "h100x2", "--checkpoint", str(hf), "--output", str(work), "--precision", "bf16",
               "--until", "convert", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    assert stage_status(json.loads(out)) == {"plan": "done", "convert": "cached", "verify": "cached"}


@pytest.mark.gpu
def test_real_engine_build_on_this_gpu_machine(hf, tmp_path):
    """Needs TensorRT-LLM + GPUs (the NGC container): real trtllm-build of the tiny model, then the version lock."""
    from nemo_trt.build.engine import detect_toolchain

    tc = detect_toolchain()
    if tc.missing():
        pytest.skip("needs " + ", ".join(tc.missing()))
    work = tmp_path / "work"
    summary = run_build(prepare(request(hf, work, gpu="auto", precision="bf16"), toolchain=tc), toolchain=tc)
    assert stage_status(summary)["engine"] == "done"
    em = read_engine_manifest(work / "engines")
    assert em.trtllm_version == tc.trtllm_version
    assert check_runtime_compat(work / "engines") == tc.trtllm_version
    assert os.path.getsize(work / "engines" / "rank0.engine") > 1_000_000


def test_an_override_no_rule_predicts_is_recorded_and_reported(cpu_box_work, hf, tmp_path, recorded, monkeypatch):
    monkeypatch.setenv("FAKE_TRTLLM_BUILD_OVERRIDE", "multiple_profiles=false")
    work = copy_work(cpu_box_work, tmp_path / "work")
    tc = toolchain()
    lines: list[str] = []
    run_build(prepare(request(hf, work), toolchain=tc), toolchain=tc, on_build_line=lines.append)
    em = read_engine_manifest(work / "engines")
    assert em.engine_settings["multiple_profiles"] is False  # the truth, from the engine's config.json
    assert em.unpredicted_overrides == {"multiple_profiles": {"planned": True, "engine": False}}
    assert any("no known builder rule" in line and "multiple_profiles" in line for line in lines)
    build = json.loads((work / "build_manifest.json").read_text())["stages"]["engine"]
    assert build["unpredicted_overrides"] == {"multiple_profiles": {"planned": True, "engine": False}}


def test_another_layout_in_the_same_workdir_is_refused_without_force(cpu_box_work, hf, tmp_path):
    # the WORKDIR holds a TP2 conversion; an h200x1 (TP1) build must not silently destroy it
    work = copy_work(cpu_box_work, tmp_path / "work")
    before = sha256_file(work / "checkpoint" / "manifest.json")
    with pytest.raises(NemoTrtError) as exc:
        run_build(prepare(request(hf, work, gpu="h200x1", until="convert"), toolchain=NO_TOOLCHAIN),
                  toolchain=NO_TOOLCHAIN)
    assert "already exists" in exc.value.problem and "--force" in exc.value.fix
    assert sha256_file(work / "checkpoint" / "manifest.json") == before


def test_detect_toolchain_honours_the_trtllm_build_override(monkeypatch, tmp_path):
    from nemo_trt.build import engine

    monkeypatch.setenv(engine.TRTLLM_BUILD_ENV, str(FAKE_BUILD))
    assert engine.detect_toolchain().trtllm_build == str(FAKE_BUILD)
    not_executable = tmp_path / "trtllm-build"
    not_executable.write_text("")
    monkeypatch.setenv(engine.TRTLLM_BUILD_ENV, str(not_executable))
    with pytest.raises(NemoTrtError, match="not an executable"):
        engine.detect_toolchain()
    monkeypatch.delenv(engine.TRTLLM_BUILD_ENV)
    tc = engine.detect_toolchain()
    if not HAVE_TRTLLM:  # this CPU machine: the refusal lists exactly what is missing
        assert tc.trtllm_version is None and any("TensorRT-LLM" in m for m in tc.missing())
