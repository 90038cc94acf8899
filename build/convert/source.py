"""The HF side of a conversion: weights read one at a time, plus ModelOpt FP8 metadata.

Each tensor (or row range) is mapped on its own, copy-on-write, at the byte range of the
(already validated) safetensors header, rather than through `safe_open`: that maps whole
files for the reader's lifetime, so every page it touched would stay resident and RSS would
grow towards the checkpoint size. A per-tensor mapping costs no copy and no zero-filled
buffer (its pages are the page cache's) and is unmapped as soon as the last piece cut from
it has been written. (Ranges not aligned to their dtype fall back to `preadv` into a buffer.)

A checkpoint quantized by NVIDIA ModelOpt (`hf_quant_config.json`, or `quantization_config`
with quant_method "modelopt" in config.json) stores FP8 `weight`s with per-tensor float32
`weight_scale` and `input_scale` next to them, and `k_scale` / `v_scale` for an FP8 KV cache
(on `self_attn.{k,v}_proj` or on `self_attn`).
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from nemo_trt.build.hf_checkpoint import DTYPES, HFCheckpoint
from nemo_trt.build.spec import ModelSpec
from nemo_trt.errors import NemoTrtError


@dataclass(frozen=True)
class SourceQuant:
    quant_algo: str | None          # "FP8" for a ModelOpt FP8 checkpoint
    kv_cache_quant_algo: str | None
    producer: str | None


def read_source_quant(directory: Path, spec: ModelSpec) -> SourceQuant:
    hq = directory / "hf_quant_config.json"
    block: dict | None = None
    producer = None
    if hq.is_file():
        try:
            data = json.loads(hq.read_text())
            block = data["quantization"]
            producer = (data.get("producer") or {}).get("name")
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise NemoTrtError(f"{hq} is not a valid ModelOpt quantization config",
                               "restore hf_quant_config.json from the original checkpoint") from exc
    else:
        qc = spec.raw_config.get("quantization_config")
        if qc:
            method = qc.get("quant_method")
            if method != "modelopt":
                raise NemoTrtError(f"checkpoint is quantized with {method!r}, which nemo-trt cannot convert",
                                   "use the BF16 checkpoint (nemo-trt quantizes to FP8 itself) "
                                   "or a ModelOpt FP8 export")
            block, producer = qc, "modelopt"
    if block is None:
        return SourceQuant(None, None, None)
    algo, kv = block.get("quant_algo"), block.get("kv_cache_quant_algo")
    if algo not in (None, "FP8") or kv not in (None, "FP8"):
        raise NemoTrtError(f"ModelOpt quantization {algo!r} / KV {kv!r} is not supported (only FP8)",
                           "use a ModelOpt FP8 export or the BF16 checkpoint")
    return SourceQuant(algo, kv, producer)


class SourceWeights:
    """Validated HF checkpoint + readers for weights and their ModelOpt scales."""

    def __init__(self, directory: str | Path):
        self.ckpt = HFCheckpoint(directory)
        self.ckpt.validate()
        self.spec = self.ckpt.spec
        self.directory = self.ckpt.directory
        self.quant = read_source_quant(self.directory, self.spec)
        self._data_start: dict[str, int] = {}
        self._offsets: dict[str, tuple[int, int]] = {}
        for shard in self.ckpt.shards:
            with open(self.directory / shard, "rb") as fh:
                (hlen,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(hlen))
            self._data_start[shard] = 8 + hlen
            for name, meta in header.items():
                if name != "__metadata__":
                    begin, end = meta["data_offsets"]
                    self._offsets[name] = (begin, end)
        self._check_quantized()

    @property
    def quantized(self) -> bool:
        return self.quant.quant_algo == "FP8"

    def _check_quantized(self) -> None:
        fp8 = [n for n, i in self.ckpt.tensors.items() if i.dtype.startswith("F8")]
        if fp8 and not self.quantized:
            raise NemoTrtError(f"{self.directory} holds FP8 tensors ({fp8[0]} …) but no ModelOpt quantization config",
                               "add the hf_quant_config.json that came with the checkpoint")
        for name in fp8:
            if name.rsplit(".", 1)[0] + ".weight_scale" not in self.ckpt.tensors:
                raise NemoTrtError(f"FP8 tensor {name!r} has no weight_scale",
                                   "re-export the checkpoint with ModelOpt; the scales are missing")

    def has(self, name: str) -> bool:
        return name in self.ckpt.tensors

    def read(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """The tensor, or only rows [start, stop) of it (a contiguous byte range: no full read)."""
        info = self.ckpt.tensors.get(name)
        if info is None:
            raise NemoTrtError(f"tensor {name!r} is not in checkpoint {self.directory}",
                               "re-download the checkpoint; config.json and the weights do not match")
        begin, end = self._offsets[name]
        shape = info.shape
        if rows is not None:
            row_bytes = (end - begin) // max(1, shape[0])
            begin, end = begin + rows[0] * row_bytes, begin + rows[1] * row_bytes
            shape = (rows[1] - rows[0], *shape[1:])
        dtype = DTYPES[info.dtype][0]
        if end <= begin:
            return torch.empty(shape, dtype=dtype)
        path = self.directory / info.shard
        start = self._data_start[info.shard] + begin
        try:
            with open(path, "rb", buffering=0) as fh:
                if os.fstat(fh.fileno()).st_size < start + (end - begin):
                    raise NemoTrtError(f"{path} ended while reading {name!r}",
                                       f"re-download {info.shard}; it is truncated")
                buf = _map(fh, start, end - begin, dtype.itemsize)
                if buf is None:
                    buf = _read(fh, start, end - begin, path, name, info.shard)
        except OSError as exc:
            raise NemoTrtError(f"cannot read {name!r} from {path}: {exc.strerror or exc}",
                               f"check {info.shard} is readable") from exc
        return buf.view(dtype).reshape(shape)

    def nbytes(self, name: str) -> int:
        begin, end = self._offsets[name]
        return end - begin

    def is_fp8(self, name: str) -> bool:
        return self.ckpt.tensors[name].dtype.startswith("F8")

    def _scalar(self, name: str) -> float | None:
        return float(self.read(name).float().reshape(-1)[0]) if name in self.ckpt.tensors else None

    def weight_scale(self, weight_name: str) -> float:
        """The scale of an FP8 weight (every FP8 weight has one: checked when the checkpoint is opened)."""
        scale = self._scalar(weight_name.rsplit(".", 1)[0] + ".weight_scale")
        if scale is None:
            raise NemoTrtError(f"FP8 tensor {weight_name!r} has no weight_scale",
                               "re-export the checkpoint with ModelOpt; the scales are missing")
        return scale

    def input_scale(self, weight_name: str) -> float | None:
        return self._scalar(weight_name.rsplit(".", 1)[0] + ".input_scale")

    def kv_scale(self, layer: int) -> float | None:
        """max(k_scale, v_scale) of a layer (one KV scale per attention in TensorRT-LLM), or None."""
        p = f"model.layers.{layer}.self_attn."
        scales = [self._scalar(n) for n in (p + "k_proj.k_scale", p + "v_proj.v_scale", p + "k_scale", p + "v_scale")]
        found = [s for s in scales if s is not None]
        return max(found) if found else None


def _map(fh, start: int, length: int, itemsize: int) -> torch.Tensor | None:
    """The byte range as a tensor over a private (copy-on-write) mapping of the page cache: no copy,
    no zero-filled anonymous pages. Unmapped when the last tensor viewing it is freed, so memory is
    held exactly as long as a read buffer would be. None when the range is not aligned to its dtype."""
    aligned = start - start % mmap.ALLOCATIONGRANULARITY
    delta = start - aligned
    if delta % itemsize:
        return None
    mm = mmap.mmap(fh.fileno(), delta + length, access=mmap.ACCESS_COPY, offset=aligned)
    return torch.frombuffer(mm, dtype=torch.uint8, count=length, offset=delta)


def _read(fh, start: int, length: int, path: Path, name: str, shard: str) -> torch.Tensor:
    buf = torch.empty(length, dtype=torch.uint8)
    view = buf.numpy().data
    got = 0
    while got < length:
        n = os.preadv(fh.fileno(), [view[got:]], start + got)
        if not n:
            raise NemoTrtError(f"{path} ended while reading {name!r}", f"re-download {shard}; it is truncated")
        got += n
    return buf
