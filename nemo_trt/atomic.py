"""Write outputs to a temporary sibling and rename into place, so nothing half-written is ever visible."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from nemo_trt.errors import NemoTrtError

PARTIAL_SUFFIX = ".partial"


@contextlib.contextmanager
def atomic_dir(target: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `target`; on success rename it to `target`.

    On any exception (Ctrl-C included) the temporary directory is removed and
    `target` is left exactly as it was. With replace=True an existing target is
    swapped out only after the new one is complete.
    """
    target = Path(target).absolute()
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=PARTIAL_SUFFIX, dir=parent))
        # mkdtemp makes 0700; the finished output should get the user's usual permissions.
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as exc:
        raise NemoTrtError(f"cannot write to {parent}: {exc.strerror or exc}",
                           "choose an output directory you can write to, or fix its permissions") from exc
    try:
        yield tmp
        if target.exists():
            if not replace:
                raise NemoTrtError(f"{target} already exists", "pass --force to replace it")
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=parent))
            os.rmdir(old)
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a single file atomically (temp file in the same directory + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
