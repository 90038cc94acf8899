"""`nemo-trt build --dry-run --json` for every profile x precision x variant against reviewed golden files.

Regenerate after an intended change with
    NEMO_TRT_REGEN_GOLDEN=1 pytest tests/test_build_dry_run_golden.py
then review the diff (git diff tests/golden/build) before committing.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nemo_trt.build.profiles import VARIANTS, list_profiles
from nemo_trt.cli import main
from nemo_trt.model_facts import DEFAULT_MODEL, resolve_model

GOLDEN = Path(__file__).parent / "golden" / "build"
REGEN = os.environ.get("NEMO_TRT_REGEN_GOLDEN") == "1"
WORKDIR = "/deploy/super49b"
# Machine-dependent keys: what this machine has, and whether a real build would run here.
VOLATILE = ("toolchain", "real_build_here", "nemo_trt_version")

CASES = [(p.name, precision, variant) for p in list_profiles() for precision in p.precisions for variant in VARIANTS]


def normalize(data: dict) -> dict:
    for key in VOLATILE:
        data.pop(key, None)
    # The golden pins what the build RUNS. Memory figures and the prose of the reasons are the
    # planner's (tests/test_planner.py); here only the settings that reach trtllm-build and Triton.
    plan = data.pop("plan")
    build = {k: v for k, v in plan["build"].items() if k != "reasons"}
    data["plan"] = {k: plan[k] for k in ("tp", "pp", "world_size", "precision", "kv_cache_dtype", "variant")}
    data["plan"]["build"] = build
    # what TensorRT-LLM's builder changes of what the profile asked for (build above is the result)
    data["plan"]["builder_overrides"] = [{k: o[k] for k in ("rule", "setting", "requested", "effective")}
                                         for o in plan["builder_overrides"]]
    for stage in data["stages"]:  # calibration estimates are calibration_plan's (tests/test_calibration_plan.py)
        for key in ("estimates", "tokens", "tokenization"):
            stage.pop(key, None)
    text = json.dumps(data, indent=2, sort_keys=True)
    text = text.replace(str(resolve_model(DEFAULT_MODEL)), "$CHECKPOINT")
    return json.loads(text)


def dry_run(capsys, *args: str) -> dict:
    capsys.readouterr()
    rc = main(["build", *args, "--dry-run", "--json"])
    out = capsys.readouterr().out
    assert rc == 0, out
    return json.loads(out)


def test_all_profiles_have_golden_files():
    assert len(CASES) >= 12  # 4 profiles; fp8 only where the GPU has it
    expected = {f"{p}-{prec}-{var}.json" for p, prec, var in CASES}
    if not REGEN:
        assert {p.name for p in GOLDEN.glob("*.json")} == expected


@pytest.mark.parametrize("profile,precision,variant", CASES)
def test_dry_run_matches_golden(capsys, profile, precision, variant):
    got = normalize(dry_run(capsys, "--gpu", profile, "--checkpoint", DEFAULT_MODEL, "--output", WORKDIR,
                            "--precision", precision, "--variant", variant))
    path = GOLDEN / f"{profile}-{precision}-{variant}.json"
    if REGEN:
        path.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    assert got == json.loads(path.read_text()), (
        f"{path.name} differs: if the change is intended, regenerate with NEMO_TRT_REGEN_GOLDEN=1 pytest "
        f"{Path(__file__).name} and review `git diff tests/golden/build`")


def test_dry_run_shows_the_real_build_refusal_here(capsys):
    # this CPU machine has no TensorRT-LLM: the dry run still works and says what a real build would do
    info = dry_run(capsys, "--gpu", "h100x2", "--checkpoint", DEFAULT_MODEL, "--output", WORKDIR)
    if info["toolchain"]["tensorrt_llm"] is None:
        assert info["real_build_here"].startswith("refused: ")
        assert "TensorRT-LLM" in info["real_build_here"]


def test_dry_run_until_convert_has_no_engine_stage(capsys):
    info = dry_run(capsys, "--gpu", "a100x8", "--checkpoint", DEFAULT_MODEL, "--output", WORKDIR,
                   "--until", "convert")
    assert [s["stage"] for s in info["stages"]] == ["plan", "convert", "verify"]
    if info["toolchain"]["tensorrt_llm"] is None:
        # convert + verify need no GPU; at most the disk (the 49B checkpoint is ~100 GB) can refuse here
        assert info["real_build_here"] == "ok" or "GB free" in info["real_build_here"]
        assert "TensorRT-LLM" not in info["real_build_here"]


def test_goldens_claim_nothing_the_builder_drops():
    """Every golden's trtllm-build command states what TensorRT-LLM 0.20's builder will build."""
    from nemo_trt.build.builder_rules import apply_builder_rules, inputs_for

    for path in sorted(GOLDEN.glob("*.json")):
        data = json.loads(path.read_text())
        plan = data["plan"]
        (engine,) = [s for s in data["stages"] if s["stage"] == "engine"]
        argv = engine["command"]
        flags = dict(zip(argv[1::2], argv[2::2]))
        # DeciLMForCausalLM: builder.py overrides reduce_fusion to False ("Overriding reduce_fusion to False")
        assert flags["--reduce_fusion"] == "disable", path.name
        _, overrides = apply_builder_rules(inputs_for(
            "DeciLMForCausalLM", tp=plan["tp"], precision=plan["precision"], kv_cache_dtype=plan["kv_cache_dtype"],
            compute_capability=data["gpu"]["compute_capability"], settings=plan["build"]))
        assert overrides == [], (path.name, overrides)
        for key in ("use_paged_context_fmha", "use_fp8_context_fmha", "reduce_fusion", "multiple_profiles"):
            assert flags[f"--{key}"] == ("enable" if plan["build"][key] else "disable"), (path.name, key)
        for key in ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens", "tokens_per_block"):
            assert int(flags[f"--{key}"]) == plan["build"][key], (path.name, key)
