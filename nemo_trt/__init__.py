"""nemo-trt: Llama-3.3-Nemotron-Super-49B-v1 from HF checkpoint to TensorRT-LLM on Triton."""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

_HERE = Path(__file__).resolve().parent
_SOURCE_ROOT = _HERE.parent


class _SourceTreeFinder(importlib.abc.MetaPathFinder):
    """Maps nemo_trt.build / nemo_trt.serve onto ./build and ./serve of a source checkout.

    An installed wheel carries them inside nemo_trt/; a checkout (editable install,
    tests) keeps them at the repository top as the design card wants, without ever
    making `build` or `serve` importable as top-level names.
    """

    def __init__(self, mapping: dict[str, Path]):
        self._mapping = mapping

    def find_spec(self, fullname, path=None, target=None):
        directory = self._mapping.get(fullname)
        if directory is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, directory / "__init__.py", submodule_search_locations=[str(directory)]
        )


def _install_source_finder() -> None:
    mapping = {}
    for name in ("build", "serve"):
        if (_HERE / name / "__init__.py").is_file():
            continue  # installed wheel: the subpackage is really here
        candidate = _SOURCE_ROOT / name
        if (candidate / "__init__.py").is_file() and (_SOURCE_ROOT / "pyproject.toml").is_file():
            mapping[f"{__name__}.{name}"] = candidate
    if mapping:
        sys.meta_path.insert(0, _SourceTreeFinder(mapping))


_install_source_finder()
