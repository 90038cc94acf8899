"""Bad input: a clear NemoTrtError, non-zero exit, and nothing written."""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from nemo_trt.build.convert import convert_checkpoint
from nemo_trt.build.convert import writer as writer_mod
from nemo_trt.cli import main
from nemo_trt.errors import NemoTrtError


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _nothing_written(out: Path) -> bool:
    return not out.exists() and not any(p.name.startswith(f".{out.name}.") for p in out.parent.iterdir())


def _index(d: Path) -> dict:
    return json.loads((d / "model.safetensors.index.json").read_text())


def _break_missing_config(d):
    (d / "config.json").unlink()


def _break_malformed_config(d):
    (d / "config.json").write_text('{"architectures": ["DeciLMForCausalLM"], "hidden_size": ')


def _break_architecture(d):
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["MistralForCausalLM"], "mistral"
    (d / "config.json").write_text(json.dumps(cfg))


def _shard_of(d, name):
    return d / _index(d)["weight_map"][name]


def _rewrite_header(d, name, mutate):
    import struct
    path = _shard_of(d, name)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    mutate(header)
    new = json.dumps(header, separators=(",", ":")).encode()
    new += b" " * (n - len(new)) if len(new) <= n else b""
    assert len(new) == n, "test header must keep its length"
    path.write_bytes(raw[:8] + new + raw[8 + n:])


def _break_missing_tensor(d):
    # drop a tensor from index and header (rename it to an unused name of the same length)
    name = "model.layers.4.mlp.down_proj.weight"
    def mutate(h):
        h["model.layers.4.mlp.down_proj.xeight"] = h.pop(name)
    _rewrite_header(d, name, mutate)
    idx = _index(d)
    idx["weight_map"]["model.layers.4.mlp.down_proj.xeight"] = idx["weight_map"].pop(name)
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))


def _break_shape(d):
    name = "model.layers.0.mlp.up_proj.weight"  # [256, 64] -> [64, 256]: same bytes, wrong shape
    _rewrite_header(d, name, lambda h: h[name].update(shape=[64, 256]))


def _break_dtype(d):
    name = "model.norm.weight"
    _rewrite_header(d, name, lambda h: h[name].update(dtype="Q8"))


def _break_truncated(d):
    path = _shard_of(d, "model.layers.6.mlp.down_proj.weight")
    path.write_bytes(path.read_bytes()[:-1000])


def _break_corrupt_header(d):
    path = _shard_of(d, "model.norm.weight")
    raw = bytearray(path.read_bytes())
    raw[10:20] = b"\xff" * 10
    path.write_bytes(bytes(raw))


def _break_index_missing_shard(d):
    idx = _index(d)
    idx["weight_map"]["model.norm.weight"] = "model-00099-of-00099.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))


CASES = {
    "missing config.json": (_break_missing_config, "no config.json"),
    "malformed config.json": (_break_malformed_config, "not valid JSON"),
    "unsupported architecture": (_break_architecture, "is not supported"),
    "missing tensor": (_break_missing_tensor, "missing tensor"),
    "wrong shape": (_break_shape, "has shape \\[64, 256\\]"),
    "unknown dtype": (_break_dtype, "unsupported dtype 'Q8'"),
    "truncated shard": (_break_truncated, "truncated or corrupt"),
    "corrupt header": (_break_corrupt_header, "not valid JSON|truncated or corrupt"),
    "index points to missing shard": (_break_index_missing_shard, "missing shard"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_checkpoint_is_refused_and_nothing_written(tmp_path, convert_source, case, capsys):
    breaker, message = CASES[case]
    src = _copy(convert_source, tmp_path / "src")
    breaker(src)
    out = tmp_path / "out"
    with pytest.raises(NemoTrtError, match=message):
        convert_checkpoint(src, out, tp=1, progress=False)
    assert _nothing_written(out)
    rc = main(["convert", "--checkpoint", str(src), "--output", str(out), "--tp", "1"])
    assert rc == 2 and _nothing_written(out)
    assert "fix:" in capsys.readouterr().err


def test_tp_the_model_cannot_take(tmp_path, convert_source, capsys):
    out = tmp_path / "out"
    assert main(["convert", "--checkpoint", str(convert_source), "--output", str(out), "--tp", "3"]) == 2
    err = capsys.readouterr().err
    assert "do not split into 3" in err and "1, 2, 4, 8" in err
    assert main(["convert", "--checkpoint", str(convert_source), "--output", str(out), "--tp", "16"]) == 2
    assert main(["convert", "--checkpoint", str(convert_source), "--output", str(out), "--tp", "1", "--pp", "8"]) == 2
    assert _nothing_written(out)


def test_fp8_refused_on_ampere_profile(tmp_path, convert_source, capsys):
    out = tmp_path / "out"
    assert main(["convert", "--checkpoint", str(convert_source), "--output", str(out), "--gpu", "a100x4",
                 "--precision", "fp8"]) == 2
    assert "FP8 is not available" in capsys.readouterr().err and _nothing_written(out)


def test_output_directory_not_writable(tmp_path, convert_source, capsys):
    # A parent that is a file fails for every user (root included, who ignores chmod).
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(NemoTrtError, match="cannot write"):
        convert_checkpoint(convert_source, blocker / "out", tp=1, progress=False)
    assert main(["convert", "--checkpoint", str(convert_source), "--output", str(blocker / "out"), "--tp", "1"]) == 2
    assert "choose an output directory" in capsys.readouterr().err
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(NemoTrtError, match="cannot write"):
                convert_checkpoint(convert_source, ro / "out", tp=1, progress=False)
            assert list(ro.iterdir()) == []
        finally:
            ro.chmod(0o700)


def test_disk_full_during_write_leaves_nothing(tmp_path, convert_source, monkeypatch):
    written = {"n": 0}

    def hook(path, nbytes):
        written["n"] += nbytes
        if written["n"] > 60_000:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_mod, "WRITE_HOOK", hook)
    out = tmp_path / "out"
    with pytest.raises(NemoTrtError, match="disk full"):
        convert_checkpoint(convert_source, out, tp=2, progress=False)
    assert written["n"] > 60_000 and _nothing_written(out)


def test_existing_output_from_other_inputs_needs_force(tmp_path, convert_source):
    out = tmp_path / "out"
    convert_checkpoint(convert_source, out, tp=1, progress=False)
    with pytest.raises(NemoTrtError, match="--force"):
        convert_checkpoint(convert_source, out, tp=2, progress=False)
    assert json.loads((out / "config.json").read_text())["mapping"]["tp_size"] == 1  # untouched
    convert_checkpoint(convert_source, out, tp=2, progress=False, force=True)
    assert json.loads((out / "config.json").read_text())["mapping"]["tp_size"] == 2
