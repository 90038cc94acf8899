"""Atomic outputs: complete or absent, with the user's usual permissions."""
from __future__ import annotations

import os
import stat

import pytest

from nemo_trt.atomic import atomic_dir, atomic_write_text
from nemo_trt.errors import NemoTrtError


def test_atomic_dir_renames_on_success_with_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "f").write_text("x")
        assert (tmp_path / "out" / "f").read_text() == "x"
        assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
        atomic_write_text(tmp_path / "g.txt", "y")
        assert stat.S_IMODE((tmp_path / "g.txt").stat().st_mode) == 0o644
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.txt", "out"]


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "f").write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_refuses_existing_without_replace_and_swaps_with_it(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old").write_text("old")
    with pytest.raises(NemoTrtError, match="already exists"):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "new").write_text("new")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["old"]
    with atomic_dir(tmp_path / "out", replace=True) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
