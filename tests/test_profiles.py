"""GPU profiles (configs/gpus/*.yaml) and GPU detection (fake NVML / fake nvidia-smi)."""
from __future__ import annotations

import os
import stat
from types import SimpleNamespace

import pytest
import yaml

from nemo_trt.build import gpu_detect
from nemo_trt.build.gpu_detect import DetectedGpu, detect_gpus, match_profile, parse_smi_csv, resolve_gpu_profile
from nemo_trt.build.planner import BuildSettings
from nemo_trt.build.profiles import LayoutSettings, list_profiles, load_profile, parse_profile, profile_names
from nemo_trt.errors import NemoTrtError
from nemo_trt.resources import gpus_dir

EXPECTED = {
    # name: (gpu name, family, count, MiB, SM, fp8, precisions, recommended)
    "h200x1": ("NVIDIA H200", "H200", 1, 143771, "9.0", True, ["bf16", "fp8"], "fp8"),
    "h100x2": ("NVIDIA H100 80GB HBM3", "H100", 2, 81559, "9.0", True, ["bf16", "fp8"], "fp8"),
    "a100x4": ("NVIDIA A100-SXM4-80GB", "A100", 4, 81920, "8.0", False, ["bf16"], "bf16"),
    "a100x8": ("NVIDIA A100-SXM4-80GB", "A100", 8, 81920, "8.0", False, ["bf16"], "bf16"),
}


def test_builtin_profiles():
    assert profile_names() == sorted(EXPECTED)
    for p in list_profiles():
        g = p.gpu
        assert (g.name, g.family, g.count, g.memory_mib, g.compute_capability, g.fp8, p.precisions,
                p.recommended_precision) == EXPECTED[p.name]


def test_every_choice_is_set_and_explained():
    # profile settings are exactly the planner's BuildSettings (minus reasons)
    assert set(LayoutSettings.model_fields) == set(BuildSettings.model_fields) - {"reasons"}
    for p in list_profiles():
        for precision in p.precisions:
            for variant in ("throughput", "latency"):
                lay = p.layout(precision, variant)
                assert set(lay.settings) == set(LayoutSettings.model_fields)
                for key in [*lay.settings, "tp", "pp"]:
                    assert len(lay.reasons[key]) > 15, (p.name, precision, variant, key)
        for key in ("memory_mib", "compute_capability", "fp8", "interconnect", "recommended_precision"):
            assert p.reasons[key]


def test_ampere_profiles_have_no_fp8_section():
    for name in ("a100x4", "a100x8"):
        raw = yaml.safe_load((gpus_dir() / f"{name}.yaml").read_text())
        assert set(raw["layouts"]) == {"bf16"}
        with pytest.raises(NemoTrtError, match="has no fp8 layout") as err:
            load_profile(name).layout("fp8")
        assert "--precision bf16" in err.value.fix


def test_unknown_profile_lists_known_ones():
    with pytest.raises(NemoTrtError, match="unknown GPU profile 'h100x8'") as err:
        load_profile("h100x8")
    assert all(n in err.value.fix for n in EXPECTED) and err.value.exit_code == 2
    assert load_profile("H100X2").name == "h100x2"


def _raw(name="h100x2") -> dict:
    return yaml.safe_load((gpus_dir() / f"{name}.yaml").read_text())


def test_profile_validation_errors(tmp_path):
    raw = _raw()
    del raw["layouts"]["fp8"]["latency"]["reasons"]["gemm_plugin"]
    with pytest.raises(NemoTrtError, match=r"no reason given for \['gemm_plugin'\]"):
        parse_profile(raw)
    raw = _raw()
    raw["layouts"]["bf16"]["throughput"]["settings"]["gemm_plugins"] = "auto"
    with pytest.raises(NemoTrtError, match="gemm_plugins"):
        parse_profile(raw)
    raw = _raw("a100x4")
    raw["layouts"]["fp8"] = raw["layouts"]["bf16"]
    with pytest.raises(NemoTrtError, match="no FP8 on Ampere"):
        parse_profile(raw)
    raw = _raw()
    raw["layouts"]["bf16"]["latency"]["tp"] = 4
    with pytest.raises(NemoTrtError, match="exceeds the 2 GPU"):
        parse_profile(raw)
    raw = _raw()
    del raw["defaults"]["settings"]["tokens_per_block"]
    with pytest.raises(NemoTrtError, match=r"settings \['tokens_per_block'\] are not set"):
        parse_profile(raw)
    raw = _raw()
    del raw["layouts"]["bf16"]["latency"]
    with pytest.raises(NemoTrtError, match="lacks variant"):
        parse_profile(raw)
    raw = _raw()
    del raw["reasons"]["memory_mib"]
    with pytest.raises(NemoTrtError, match="reason for 'memory_mib'"):
        parse_profile(raw)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(NemoTrtError, match="cannot read GPU profile"):
        load_profile(str(bad))
    ok = tmp_path / "mine.yaml"
    ok.write_text(yaml.safe_dump(_raw()))
    assert load_profile(str(ok)).name == "h100x2"


# ---- detection ------------------------------------------------------------------------------

class FakeNvml:
    """Just enough of pynvml's API; `names` may be bytes like old pynvml returns."""

    def __init__(self, gpus, fail_init=False):
        self.gpus, self.fail_init, self.shutdown = gpus, fail_init, False

    def nvmlInit(self):
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shutdown = True

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return self.gpus[h][0]

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=self.gpus[h][1] * 1024 * 1024, free=0, used=0)

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return self.gpus[h][2]


def test_nvml_detection():
    nvml = FakeNvml([(b"NVIDIA H100 80GB HBM3", 81559, (9, 0)), ("NVIDIA H100 80GB HBM3", 81559, (9, 0))])
    gpus = detect_gpus(nvml=nvml, run_smi=lambda: pytest.fail("nvidia-smi must not run when NVML works"))
    assert gpus == [DetectedGpu(0, "NVIDIA H100 80GB HBM3", 81559, "9.0"),
                    DetectedGpu(1, "NVIDIA H100 80GB HBM3", 81559, "9.0")]
    assert nvml.shutdown
    assert match_profile(gpus).name == "h100x2"


def test_falls_back_to_nvidia_smi():
    smi = "NVIDIA H200, 143771, 9.0\n"
    gpus = detect_gpus(nvml=FakeNvml([], fail_init=True), run_smi=lambda: smi)
    assert gpus == [DetectedGpu(0, "NVIDIA H200", 143771, "9.0")]
    assert match_profile(gpus).name == "h200x1"


def test_real_nvidia_smi_binary_on_path(tmp_path, monkeypatch):
    # a fake nvidia-smi executable: checks the exact query and prints 8 A100 rows
    script = tmp_path / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = "--query-gpu=name,memory.total,compute_cap" ] || exit 9\n'
        '[ "$2" = "--format=csv,noheader,nounits" ] || exit 9\n'
        "for i in 0 1 2 3 4 5 6 7; do echo 'NVIDIA A100-SXM4-80GB, 81920, 8.0'; done\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    gpus = detect_gpus(nvml=None)
    assert len(gpus) == 8 and gpus[7].index == 7 and gpus[0].family == "A100"
    assert match_profile(gpus).name == "a100x8"
    script.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate' >&2\nexit 9\n")
    with pytest.raises(NemoTrtError, match="nvidia-smi exited 9: NVIDIA-SMI has failed"):
        detect_gpus(nvml=None)


def test_no_gpu_at_all(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi anywhere
    with pytest.raises(NemoTrtError) as err:
        detect_gpus(nvml=FakeNvml([], fail_init=True))
    assert "no NVIDIA GPU/driver was found" in err.value.problem
    assert "nvidia-smi not found" in err.value.problem and "--gpu PROFILE" in err.value.fix
    assert err.value.exit_code == 2


def test_matching_rules():
    def gpus(name, mib, cap, n):
        return [DetectedGpu(i, name, mib, cap) for i in range(n)]

    assert match_profile(gpus("NVIDIA A100-SXM4-80GB", 81920, "8.0", 4)).name == "a100x4"
    assert match_profile(gpus("NVIDIA A100-SXM4-80GB", 81920, "8.0", 6)).name == "a100x4"  # 6 GPUs: use 4
    assert match_profile(gpus("NVIDIA H100 80GB HBM3", 81559, "9.0", 8)).name == "h100x2"
    assert match_profile(gpus("NVIDIA H200", 143771, "9.0", 8)).name == "h200x1"
    assert match_profile(gpus("NVIDIA A100 80GB PCIe", 81920, "8.0", 8)).name == "a100x8"
    with pytest.raises(NemoTrtError, match="no GPU profile matches.*A100-SXM4-40GB"):
        match_profile(gpus("NVIDIA A100-SXM4-40GB", 40960, "8.0", 8))  # too little memory per GPU
    with pytest.raises(NemoTrtError, match="no GPU profile matches"):
        match_profile(gpus("NVIDIA H100 80GB HBM3", 81559, "9.0", 1))  # h100x2 needs 2
    with pytest.raises(NemoTrtError, match="no GPU profile matches.*L40S"):
        match_profile(gpus("NVIDIA L40S", 46068, "8.9", 2))
    mixed = gpus("NVIDIA H100 80GB HBM3", 81559, "9.0", 1) + [DetectedGpu(1, "NVIDIA A100-SXM4-80GB", 81920, "8.0")]
    with pytest.raises(NemoTrtError, match="no GPU profile matches") as err:
        match_profile(mixed)
    assert "h100x2" in err.value.fix


def test_parse_smi_csv():
    assert parse_smi_csv("NVIDIA H100 80GB HBM3, 81559, 9.0\n\n") == [DetectedGpu(0, "NVIDIA H100 80GB HBM3", 81559,
                                                                                  "9.0")]
    with pytest.raises(gpu_detect._Unavailable):
        parse_smi_csv("garbage\n")
    with pytest.raises(gpu_detect._Unavailable):
        parse_smi_csv("NVIDIA H200, [N/A], 9.0\n")


def test_resolve_gpu_auto(monkeypatch):
    monkeypatch.setattr(gpu_detect, "detect_gpus",
                        lambda: [DetectedGpu(i, "NVIDIA H100 80GB HBM3", 81559, "9.0") for i in range(2)])
    assert resolve_gpu_profile("auto").name == "h100x2"
    assert load_profile("auto").name == "h100x2"
    assert resolve_gpu_profile("a100x8").name == "a100x8"
