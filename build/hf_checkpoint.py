"""Hugging Face safetensors checkpoints: a validated, lazy reader and a sharded writer.

The reader never loads a whole checkpoint: it parses the safetensors headers
(8-byte length + JSON) to know every tensor's shard, dtype, shape and byte
range, checks them against the model spec and the file sizes (so a truncated or
corrupt shard is caught before any conversion starts), and hands out one tensor
at a time through `safetensors.safe_open` (memory-mapped).
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from nemo_trt.atomic import atomic_dir
from nemo_trt.build.spec import ModelSpec
from nemo_trt.errors import NemoTrtError

if TYPE_CHECKING:  # pragma: no cover
    from safetensors import safe_open

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

# safetensors dtype string <-> torch dtype, element size in bytes
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "BF16": (torch.bfloat16, 2),
    "F16": (torch.float16, 2),
    "F32": (torch.float32, 4),
    "F64": (torch.float64, 8),
    "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "I16": (torch.int16, 2),
    "I32": (torch.int32, 4),
    "I64": (torch.int64, 8),
    "BOOL": (torch.bool, 1),
}
TORCH_TO_ST = {dt: name for name, (dt, _) in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shard: str  # file name relative to the checkpoint directory
    dtype: str  # safetensors dtype string
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class ShardHeader:
    file: str
    size: int
    header_sha256: str
    tensors: dict[str, TensorInfo]


def read_shard_header(path: Path) -> ShardHeader:
    """Parse and validate one safetensors header against the file's real size."""
    fix = f"re-download {path.name}; the file is truncated or corrupt"
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) < 8:
                raise NemoTrtError(f"{path}: not a safetensors file (shorter than 8 bytes)", fix)
            (hlen,) = struct.unpack("<Q", raw_len)
            if hlen > _MAX_HEADER or 8 + hlen > size:
                raise NemoTrtError(f"{path}: safetensors header length {hlen} does not fit the file ({size} bytes)",
                                   fix)
            raw = fh.read(hlen)
    except OSError as exc:
        raise NemoTrtError(f"cannot read {path}: {exc.strerror or exc}",
                           "check the file exists and is readable") from exc
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NemoTrtError(f"{path}: safetensors header is not valid JSON", fix) from exc
    if not isinstance(header, dict):
        raise NemoTrtError(f"{path}: safetensors header is not a JSON object", fix)
    header.pop("__metadata__", None)
    data_len = size - 8 - hlen
    tensors: dict[str, TensorInfo] = {}
    for name, meta in header.items():
        dtype = meta.get("dtype") if isinstance(meta, dict) else None
        if dtype not in DTYPES:
            raise NemoTrtError(
                f"{path}: tensor {name!r} has unsupported dtype {dtype!r}",
                f"nemo-trt reads {', '.join(sorted(DTYPES))}; convert the checkpoint to bfloat16 first",
            )
        shape = tuple(int(s) for s in meta.get("shape", []))
        begin, end = meta.get("data_offsets", (0, -1))
        nbytes = math.prod(shape) * DTYPES[dtype][1]
        if end - begin != nbytes or end > data_len or begin < 0:
            raise NemoTrtError(
                f"{path}: tensor {name!r} ({dtype}{list(shape)}) lies outside the file or has a wrong byte range "
                f"(offsets {begin}..{end}, data section {data_len} bytes)",
                fix,
            )
        tensors[name] = TensorInfo(name, path.name, dtype, shape, nbytes)
    return ShardHeader(path.name, size, hashlib.sha256(raw).hexdigest(), tensors)


class HFCheckpoint:
    """A lazily read HF checkpoint directory (config.json + safetensors shards)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise NemoTrtError(f"checkpoint directory {self.directory} does not exist",
                               "pass --checkpoint the directory of a Hugging Face checkpoint")
        self.spec = ModelSpec.from_path(self.directory)
        self.shards: dict[str, ShardHeader] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self._open: dict[str, safe_open] = {}
        self._load_index()

    # ---- discovery and validation ---------------------------------------
    def _load_index(self) -> None:
        index_path = self.directory / INDEX_NAME
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise NemoTrtError(f"{index_path} is not a valid safetensors index (no weight_map)",
                                   "re-download model.safetensors.index.json") from exc
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (self.directory / f).is_file()]
            if missing:
                raise NemoTrtError(
                    f"{index_path.name} points to missing shard(s): {', '.join(missing)}",
                    "download the missing shard files into the checkpoint directory",
                )
        else:
            weight_map = None
            files = sorted(p.name for p in self.directory.glob("*.safetensors"))
            if not files:
                raise NemoTrtError(f"no *.safetensors files in {self.directory}",
                                   "nemo-trt reads safetensors checkpoints; "
                                   "convert .bin weights with transformers first")
        for f in files:
            header = read_shard_header(self.directory / f)
            self.shards[f] = header
            for name, info in header.tensors.items():
                if name in self.tensors:
                    raise NemoTrtError(f"tensor {name!r} appears in both {self.tensors[name].shard} and {f}",
                                       "remove the duplicate shard from the checkpoint directory")
                self.tensors[name] = info
        if weight_map is not None:
            for name, shard in weight_map.items():
                held = self.tensors.get(name)
                if held is None or held.shard != shard:
                    raise NemoTrtError(f"{INDEX_NAME} says {name!r} is in {shard}, but that shard does not hold it",
                                       "re-download the checkpoint; index and shards do not match")

    def validate(self) -> None:
        """Every tensor the spec needs is present with the right shape (extra tensors are ignored)."""
        expected = self.spec.hf_tensor_shapes()
        missing = [n for n in expected if n not in self.tensors]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise NemoTrtError(f"checkpoint {self.directory} is missing tensor(s): {shown}",
                               "re-download the checkpoint; config.json and the weights do not match")
        for name, shape in expected.items():
            got = self.tensors[name].shape
            if got != shape:
                raise NemoTrtError(
                    f"tensor {name!r} has shape {list(got)}, but config.json implies {list(shape)}",
                    "check that config.json belongs to these weights",
                )

    # ---- access ----------------------------------------------------------
    def get(self, name: str) -> torch.Tensor:
        from safetensors import SafetensorError, safe_open

        info = self.tensors.get(name)
        if info is None:
            raise NemoTrtError(f"tensor {name!r} is not in checkpoint {self.directory}",
                               "re-download the checkpoint; config.json and the weights do not match")
        handle = self._open.get(info.shard)
        try:
            if handle is None:
                handle = safe_open(str(self.directory / info.shard), framework="pt")
                self._open[info.shard] = handle
            return handle.get_tensor(name)
        except (SafetensorError, OSError) as exc:
            raise NemoTrtError(f"cannot read tensor {name!r} from {info.shard}: {exc}",
                               f"re-download {info.shard}; the file is truncated or corrupt") from exc

    def iter_tensors(self, names: Iterable[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        for name in names if names is not None else self.spec.hf_tensor_shapes():
            yield name, self.get(name)

    def close(self) -> None:
        self._open.clear()

    def __enter__(self) -> HFCheckpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def total_bytes(self) -> int:
        return sum(h.size for h in self.shards.values())

    def fingerprint(self) -> dict:
        """Identity of the source without hashing gigabytes: names, sizes, header hashes, config hash."""
        cfg = (self.directory / "config.json").read_bytes()
        return {
            "config_sha256": hashlib.sha256(cfg).hexdigest(),
            "files": [
                {"name": h.file, "size": h.size, "header_sha256": h.header_sha256}
                for h in sorted(self.shards.values(), key=lambda h: h.file)
            ],
        }


# ---- writing ----------------------------------------------------------------
@dataclass(frozen=True)
class PendingTensor:
    """A tensor to write, made on demand so a large checkpoint never sits in memory at once."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    make: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def _as_pending(tensors: Sequence[PendingTensor] | Mapping[str, torch.Tensor]) -> list[PendingTensor]:
    if isinstance(tensors, Mapping):
        return [PendingTensor(n, tuple(t.shape), t.dtype, _already_made(t)) for n, t in tensors.items()]
    return list(tensors)


def _already_made(t: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: t


def plan_shards(tensors: Sequence[PendingTensor], max_shard_bytes: int) -> list[list[PendingTensor]]:
    shards: list[list[PendingTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def write_hf_checkpoint(
    out_dir: str | Path,
    config: dict,
    tensors: Sequence[PendingTensor] | Mapping[str, torch.Tensor],
    *,
    max_shard_bytes: int = 2 * 1024**3,
    extra_files: Mapping[str, str | bytes] | None = None,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write config.json, sharded `model-0000X-of-0000Y.safetensors` and the index, atomically."""
    from safetensors.torch import save_file

    pending = _as_pending(tensors)
    shards = plan_shards(pending, max_shard_bytes)
    n = len(shards)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, replace=force) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        weight_map: dict[str, str] = {}
        total = 0
        for i, shard in enumerate(shards, start=1):
            fname = f"model-{i:05d}-of-{n:05d}.safetensors"
            data = {}
            for t in shard:
                tensor = t.make()
                if tuple(tensor.shape) != tuple(t.shape) or tensor.dtype != t.dtype:
                    raise ValueError(f"{t.name}: made {tensor.dtype}{list(tensor.shape)}, "
                                     f"declared {t.dtype}{list(t.shape)}")
                data[t.name] = tensor.contiguous()
                weight_map[t.name] = fname
                total += t.nbytes
            save_file(data, str(tmp / fname), metadata={"format": "pt"})
            del data
            if progress:
                progress(i)
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        for name, content in (extra_files or {}).items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)
    return out_dir
