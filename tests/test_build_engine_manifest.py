"""Engine/runtime version lock: what `serve` uses to refuse engines from another TensorRT-LLM."""
from __future__ import annotations

import json

import pytest

from nemo_trt.build import engine_manifest as em
from nemo_trt.build.trtllm_target import load_target
from nemo_trt.errors import NemoTrtError


def _manifest(version: str, **kw) -> em.EngineManifest:
    return em.EngineManifest(created_at="2026-01-01T00:00:00Z", trtllm_version=version, tp=1, pp=1,
                             world_size=1, **kw)


def test_roundtrip_and_matching_runtime(tmp_path):
    em.write_engine_manifest(tmp_path, _manifest("0.20.0", profile="h100x2"))
    assert em.read_engine_manifest(tmp_path).profile == "h100x2"
    assert em.check_runtime_compat(tmp_path, runtime_version="0.20.0") == "0.20.0"


def test_mismatch_names_both_versions_and_the_image(tmp_path):
    em.write_engine_manifest(tmp_path, _manifest("0.20.0"))
    with pytest.raises(NemoTrtError) as exc:
        em.check_runtime_compat(tmp_path, runtime_version="0.21.0")
    msg = str(exc.value)
    assert "built with TensorRT-LLM 0.20.0" in msg and "this server has 0.21.0" in msg
    assert "nemo-trt build" in msg and load_target().container_image in msg


def test_no_runtime_refuses_unless_detection_off(tmp_path, monkeypatch):
    em.write_engine_manifest(tmp_path, _manifest("0.20.0"))
    monkeypatch.setattr(em, "runtime_trtllm_version", lambda: None)
    with pytest.raises(NemoTrtError, match="no TensorRT-LLM"):
        em.check_runtime_compat(tmp_path)
    assert em.check_runtime_compat(tmp_path, detect=False) == "0.20.0"


def test_falls_back_to_trtllm_config_version(tmp_path):
    # engines built outside nemo-trt: TRT-LLM's own config.json carries "version"
    (tmp_path / "config.json").write_text(json.dumps({"version": "0.19.0", "build_config": {}}))
    with pytest.raises(NemoTrtError, match=r"0\.19\.0 \(per config\.json\)"):
        em.check_runtime_compat(tmp_path, runtime_version="0.20.0")
    assert em.check_runtime_compat(tmp_path, runtime_version="0.19.0") == "0.19.0"


def test_unknown_and_invalid_manifests(tmp_path):
    with pytest.raises(NemoTrtError, match="cannot tell which TensorRT-LLM"):
        em.check_runtime_compat(tmp_path, runtime_version="0.20.0")
    with pytest.raises(NemoTrtError, match="no engine_manifest.json"):
        em.read_engine_manifest(tmp_path)
    (tmp_path / em.ENGINE_MANIFEST_NAME).write_text("{not json")
    with pytest.raises(NemoTrtError, match="not a valid engine manifest"):
        em.read_engine_manifest(tmp_path)


def test_runtime_detection_without_trtllm_installed():
    # this CPU machine has no TensorRT-LLM: detection must say so without importing anything heavy
    import importlib.util
    if importlib.util.find_spec("tensorrt_llm") is None:
        assert em.runtime_trtllm_version() is None


def test_rank_engine_files_sorted_numerically(tmp_path):
    for r in (10, 2, 0, 1):
        (tmp_path / f"rank{r}.engine").write_bytes(b"x")
    (tmp_path / "rank.engine").write_bytes(b"x")
    names = [p.name for p in em.rank_engine_files(tmp_path)]
    assert names == ["rank0.engine", "rank1.engine", "rank2.engine", "rank10.engine"]
