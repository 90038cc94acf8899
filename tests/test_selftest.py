"""`nemo-trt selftest --gpu` on a CPU machine: the refusal, the exact commands (dry run), and the whole run
up to the GPU call with the real converter, verifier and repository writer (trtllm-build stand-in)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nemo_trt import selftest as st
from nemo_trt.build.engine import Toolchain
from nemo_trt.build.gpu_detect import DetectedGpu
from nemo_trt.build.profiles import parse_profile
from nemo_trt.cli import main
from nemo_trt.errors import NemoTrtError

FAKE_BUILD = Path(__file__).parent / "fixtures" / "fake_trtllm_build.py"
H100 = st.Gpu("NVIDIA H100 80GB HBM3", 81559, "9.0", "H100")
A100 = st.Gpu("NVIDIA A100-SXM4-80GB", 81920, "8.0", "A100")


def toolchain(n: int, version: str = "0.20.0") -> Toolchain:
    gpus = tuple(DetectedGpu(i, H100.name, H100.memory_mib, H100.compute_capability) for i in range(n))
    return Toolchain(trtllm_version=version, tensorrt_version="10.10.0.31", trtllm_build=str(FAKE_BUILD), gpus=gpus)


class Install:
    def __init__(self, root: Path, bundled: bool = False):
        self.root, self.binary, self.bundled = root, root / "bin" / "tritonserver", bundled


def test_layouts_follow_the_gpus():
    assert [x.name for x in st.layouts_for([])] == []
    assert [x.name for x in st.layouts_for([H100])] == ["bf16-tp1"]
    assert [x.name for x in st.layouts_for([H100, H100])] == ["bf16-tp1", "bf16-tp2", "fp8-pp2"]
    assert [x.name for x in st.layouts_for([A100] * 4)] == ["bf16-tp1", "bf16-tp2"]  # no FP8 on Ampere
    golden = {x.name: x.compare for x in st.layouts_for([H100, H100])}
    assert golden == {"bf16-tp1": "golden", "bf16-tp2": "golden", "fp8-pp2": "properties"}


def test_generated_profiles_are_valid_and_plan_the_golden_limits():
    from nemo_trt.build.planner import make_plan
    from nemo_trt.build.tiny import tiny_spec

    for layout in st.layouts_for([H100, H100]):
        profile = parse_profile(st.selftest_profile([H100, H100], layout), "selftest")
        plan = make_plan(tiny_spec(), profile, precision=layout.precision)
        assert (plan.tp, plan.pp) == (layout.tp, layout.pp)
        assert (plan.build.max_seq_len, plan.build.max_input_len) == (st.MAX_SEQ_LEN, st.MAX_INPUT_LEN)
        assert plan.builder_overrides == []  # the engine gets exactly these settings
        if layout.precision == "fp8":
            assert plan.kv_cache_dtype == "fp8" and plan.build.use_fp8_context_fmha


def test_refuses_here_naming_everything_missing(tmp_path, capsys):
    rc = main(["selftest", "--gpu", "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert rc == 2
    for what in ("TensorRT-LLM (python package tensorrt_llm)", "trtllm-build", "NVIDIA GPUs",
                 "TensorRT-LLM backend", "tritonserver:25.06-trtllm-python-py3", "docker run --gpus all"):
        assert what in err, what
    assert not (tmp_path / "w").exists()  # refused before any work


def test_preflight_names_each_missing_piece(tmp_path):
    backend = tmp_path / "opt"
    (backend / "backends" / "tensorrtllm").mkdir(parents=True)
    st.preflight(toolchain(2), tritonserver=Install(backend), mpirun="/usr/bin/mpirun")  # complete
    cases = [
        (dict(tritonserver=Install(tmp_path / "pytriton", bundled=True), mpirun="mpirun"), "nvidia-pytriton CPU copy"),
        (dict(tritonserver=Install(tmp_path / "bare"), mpirun="mpirun"), "backends/tensorrtllm"),
        (dict(tritonserver=None, mpirun="mpirun"), "tritonserver with the TensorRT-LLM backend"),
        (dict(tritonserver=Install(backend), mpirun=None), "mpirun"),
    ]
    for kwargs, expected in cases:
        with pytest.raises(NemoTrtError, match=expected):
            st.preflight(toolchain(2), **kwargs)
    st.preflight(toolchain(1), tritonserver=Install(backend), mpirun=None)  # one GPU: no mpirun needed
    with pytest.raises(NemoTrtError, match="TensorRT-LLM 0.21.0"):
        st.preflight(toolchain(1, "0.21.0"), tritonserver=Install(backend))
    st.preflight(toolchain(1, "0.21.0"), tritonserver=Install(backend), force=True)


def test_dry_run_prints_every_command(tmp_path, capsys):
    work = tmp_path / "w"
    assert main(["selftest", "--gpu", "--dry-run", "--assume-gpus", "2", "--workdir", str(work), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert not work.exists()  # nothing written
    assert [e["layout"]["name"] for e in info["layouts"]] == ["bf16-tp1", "bf16-tp2", "fp8-pp2"]
    assert info["real_run_here"].startswith("refused: ")
    for entry in info["layouts"]:
        name = entry["layout"]["name"]
        argv = entry["trtllm_build"]
        flags = dict(zip(argv[1::2], argv[2::2]))
        assert argv[0] == "trtllm-build" and flags["--reduce_fusion"] == "disable"
        assert (flags["--max_seq_len"], flags["--max_input_len"]) == ("4096", "4095")
        assert flags["--use_fp8_context_fmha"] == ("enable" if name == "fp8-pp2" else "disable")
        assert entry["builder_overrides"] == []
        cmds = entry["commands"]
        assert cmds["build"].startswith(f"nemo-trt build --gpu {work / name / 'profile.yaml'} --checkpoint ")
        assert "--properties-only --concurrency 4 --repeat 2" in cmds["properties"]
        assert ("golden" in cmds) is (name != "fp8-pp2")
        if "golden" in cmds:
            assert "--golden" in cmds["golden"] and cmds["golden"].split("--golden ")[1].startswith(
                str(st.golden_path()))
    rc = main(["selftest", "--gpu", "--assume-gpus", "2"])
    assert rc == 2 and "--dry-run" in capsys.readouterr().err
    assert main(["selftest", "--gpu", "--dry-run", "--assume-gpus", "1", "--layout", "bf16-tp2"]) == 2
    assert "no layout bf16-tp2" in capsys.readouterr().err
    assert main(["selftest", "--dry-run"]) == 2


def test_runs_up_to_the_gpu_call(tmp_path, tiny_checkpoint_dir):
    """Real convert/verify/repository for the multi-GPU layouts of a 2-GPU machine (bf16-tp1 is their
    subset); trtllm-build is the stand-in and nothing is served (that needs the TensorRT-LLM backend)."""
    plan = st.plan_selftest(tmp_path / "selftest", [H100, H100], golden=st.golden_path(),
                            checkpoint=tiny_checkpoint_dir)
    plan.layouts = [lp for lp in plan.layouts if lp.layout.name != "bf16-tp1"]
    events: list[tuple[str, str]] = []
    report = st.run_selftest(plan, toolchain(2), serve=False, on_event=lambda *e: events.append(e))
    assert report["passed"], json.dumps(report, indent=1)[:3000]
    assert [e["layout"]["name"] for e in report["layouts"]] == ["bf16-tp2", "fp8-pp2"]
    for entry in report["layouts"]:
        build = entry["steps"]["build"]
        stages = dict(build["stages"])
        if entry["layout"]["name"].startswith("fp8"):  # FP8 from the BF16 tiny: calibrated first (or reused)
            assert stages.pop("calibrate") in ("done", "cached")
        assert stages == {"plan": "done", "convert": "done", "verify": "done", "engine": "done", "repo": "done"}
        assert build["unpredicted_overrides"] == {} and build["engine_settings"]["reduce_fusion"] is False
        assert entry["steps"]["contract"]["passed"]
    fp8 = json.loads((tmp_path / "selftest" / "fp8-pp2" / "work" / "checkpoint" / "config.json").read_text())
    # tiny layers 4 (linear attention) and 5 (linear FFN) are stage 1's local 0 and 1
    assert fp8["quantization"]["exclude_modules"] == ["lm_head", "transformer.layers.0.attention",
                                                      "transformer.layers.1.ffn"]
    assert json.loads((tmp_path / "selftest" / "selftest.json").read_text())["passed"] is True
    assert ("bf16-tp2", "build (convert, verify, trtllm-build, repository)") in events
