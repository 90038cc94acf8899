"""Streaming HF -> TensorRT-LLM conversion: one pass over the source, rank files written as it goes.

Work is split into jobs of (PP stage, some TP ranks). A job reads each source tensor of its
stage once (in file order), cuts every rank's piece (`weight_map.pieces_for_rank`), quantizes
it when asked, and appends it to that rank's open file (`writer.StreamingSafetensorsWriter`).
Peak memory is bounded by the bytes in flight to the writers (`InFlight`), whatever the number of layers. With
`workers > 1` jobs run in spawned processes (TP ranks of a stage split across them).
"""
from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from nemo_trt.build.convert import fp8
from nemo_trt.build.convert.mapping import RankMapping, rank_of
from nemo_trt.build.convert.trtllm_config import rank_file
from nemo_trt.build.convert.weight_map import Rule, hf_module, pieces_for_rank, rank_rules
from nemo_trt.build.convert.writer import Entry, StreamingSafetensorsWriter, disk_error
from nemo_trt.build.hf_checkpoint import DTYPES, TORCH_TO_ST
from nemo_trt.build.spec import ModelSpec
from nemo_trt.errors import NemoTrtError

if TYPE_CHECKING:  # pragma: no cover
    from nemo_trt.build.convert.source import SourceWeights

DTYPE_OF_ST = {name: dt for name, (dt, _) in DTYPES.items()}
PRECISIONS = ("bf16", "fp8")
KV_DTYPES = ("bf16", "fp8")
_TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class QuantSettings:
    precision: str                      # "bf16" | "fp8" (weights of the GEMMs)
    kv_cache_dtype: str                 # "bf16" | "fp8"
    dtype: str                          # activation / unquantized dtype: bfloat16 | float16 | float32
    act_amax: dict[str, float] = field(default_factory=dict)  # HF linear module -> max |input|
    kv_amax: dict[int, float] = field(default_factory=dict)   # layer -> max |k|,|v| (post-RoPE bound)

    @property
    def torch_dtype(self) -> torch.dtype:
        return _TORCH_DTYPES[self.dtype]


@dataclass(frozen=True)
class Job:
    checkpoint: str
    out_dir: str
    tp: int
    pp: int
    pp_rank: int
    tp_ranks: tuple[int, ...]
    quant: QuantSettings


# ---- per-rank file layout ---------------------------------------------------------
def weight_dtype(rule: Rule, q: QuantSettings) -> torch.dtype:
    return fp8.FP8 if (q.precision == "fp8" and rule.linear) else q.torch_dtype


def rank_entries(spec: ModelSpec, m: RankMapping, q: QuantSettings) -> list[tuple[Rule, list[Entry]]]:
    """Every tensor of a rank file in order: each weight followed by its FP8 scaling factors."""
    out = []
    for rule in rank_rules(spec, m):
        entries = [Entry(rule.name, weight_dtype(rule, q), rule.shape)]
        if q.precision == "fp8" and rule.linear:
            entries += [Entry(f"{rule.module}.{fp8.WEIGHT_SCALE}", torch.float32, (1,)),
                        Entry(f"{rule.module}.{fp8.ACTIVATION_SCALE}", torch.float32, (1,))]
        if q.kv_cache_dtype == "fp8" and rule.name.endswith("attention.qkv.weight"):
            entries.append(Entry(rule.name.replace("qkv.weight", fp8.KV_SCALE), torch.float32, (1,)))
        out.append((rule, entries))
    return out


# ---- one rule: HF tensors -> per-rank tensors -------------------------------------------
def produce(rule: Rule, src: SourceWeights, q: QuantSettings, tp: int, tp_ranks: tuple[int, ...]
            ) -> Iterator[tuple[int, list[tuple[str, torch.Tensor | list[torch.Tensor]]]]]:
    """Yield (tp_rank, [(name, tensor or its row blocks in order), ...]) for one rule."""
    sources = [src.read(n) for n in rule.sources]
    source_fp8 = src.is_fp8(rule.sources[0])
    extra: list[tuple[str, torch.Tensor]] = []
    if weight_dtype(rule, q) == fp8.FP8:
        if source_fp8:  # ModelOpt export: one scale per fused tensor = max, requantize the others
            w_scales = [src.weight_scale(n) for n in rule.sources]
            w_scale = max(w_scales)
            sources = [fp8.requantize(t, s, w_scale) for t, s in zip(sources, w_scales)]
            a_scales = [s for s in (src.input_scale(n) for n in rule.sources) if s is not None]
            if len(a_scales) < len(rule.sources):
                raise NemoTrtError(f"{rule.sources[0]} has no input_scale in the FP8 checkpoint",
                                   "re-export with ModelOpt (static activation scales) or convert the BF16 checkpoint")
            a_scale = max(a_scales)
        else:
            w_scale = fp8.scale_from_amax(max(fp8.amax(t) for t in sources))
            a_scale = fp8.scale_from_amax(max(_act_amax(q, n) for n in rule.sources))
        extra = [(f"{rule.module}.{fp8.WEIGHT_SCALE}", fp8.scale_tensor(w_scale)),
                 (f"{rule.module}.{fp8.ACTIVATION_SCALE}", fp8.scale_tensor(a_scale))]
    elif source_fp8:  # pre-quantized source, unquantized output: dequantize
        sources = [fp8.dequantize(t, src.weight_scale(n), q.torch_dtype) for t, n in zip(sources, rule.sources)]
    else:
        sources = [t if t.dtype == q.torch_dtype else t.to(q.torch_dtype) for t in sources]
    if q.kv_cache_dtype == "fp8" and rule.name.endswith("attention.qkv.weight"):
        layer = rule.layer_index
        kv = src.kv_scale(layer) if src.quantized else None
        if kv is None:
            if layer not in q.kv_amax:
                raise NemoTrtError(f"no FP8 KV-cache scale for layer {layer}",
                                   "calibrate (BF16 source) or use --kv-cache-dtype bf16 for this FP8 checkpoint")
            kv = fp8.scale_from_amax(q.kv_amax[layer])
        extra.append((rule.name.replace("qkv.weight", fp8.KV_SCALE), fp8.scale_tensor(kv)))
    for r in tp_ranks:
        pieces = pieces_for_rank(rule, sources, tp, r)  # row blocks of the rank tensor: no torch.cat copy
        if weight_dtype(rule, q) == fp8.FP8 and pieces[0].dtype != fp8.FP8:
            pieces = [fp8.quantize(p, float(extra[0][1])) for p in pieces]  # elementwise: same as on the cat
        yield r, [(rule.name, pieces), *extra]


def _act_amax(q: QuantSettings, weight_name: str) -> float:
    module = hf_module(weight_name)
    if module not in q.act_amax:
        raise NemoTrtError(f"no calibration data for {module}", "calibrate with prompts that run the whole model")
    return q.act_amax[module]


# ---- a job: one stage, some TP ranks ------------------------------------------------
def run_job(job: Job, report: Callable[[int], None] | None = None) -> dict[str, str]:
    """Write the rank files of `job`; returns {file name: sha256}."""
    from nemo_trt.build.convert.source import SourceWeights

    src = SourceWeights(job.checkpoint)
    spec = src.spec
    layout = rank_entries(spec, RankMapping(job.tp, job.pp, rank_of(job.tp_ranks[0], job.pp_rank, job.tp)), job.quant)
    all_entries = [e for _, es in layout for e in es]
    threaded = len(job.tp_ranks) > 1 or (os.cpu_count() or 1) > 1
    out_dir = Path(job.out_dir)
    # Opened inside the try: an error or Ctrl-C while opening the second rank's file (its header
    # is written on open) must still stop the first one's writer thread and close its file.
    writers: dict[int, StreamingSafetensorsWriter] = {}
    try:
        for r in job.tp_ranks:
            writers[r] = StreamingSafetensorsWriter(out_dir / rank_file(rank_of(r, job.pp_rank, job.tp)), all_entries,
                                                    threaded=threaded)
        inflight = InFlight(list(writers.values()))
        for rule, entries in layout:
            if streams_by_rows(rule, src, job.quant):
                copy_rows(rule, src, job, writers, report, inflight)
                continue
            held = sum(src.nbytes(n) for n in rule.sources)
            target = TORCH_TO_ST[weight_dtype(rule, job.quant)]
            if src.is_fp8(rule.sources[0]) or any(src.ckpt.tensors[n].dtype != target for n in rule.sources):
                # cast / (re)quantized pieces are new tensors
                held += sum(e.nbytes for e in entries) * len(job.tp_ranks)
            inflight.admit(held)
            for r, tensors in produce(rule, src, job.quant, job.tp, job.tp_ranks):
                _write_pieces(writers[r], tensors, report)
                # pieces are views of the source tensor: drop every reference before the next read
                del tensors
            inflight.queued(held)
        return {w.path.name: w.close() for w in writers.values()}
    finally:
        for w in writers.values():
            w.abort()


def _write_pieces(writer: StreamingSafetensorsWriter, tensors: list[tuple[str, torch.Tensor | list[torch.Tensor]]],
                  report: Callable[[int], None] | None) -> None:
    for name, t in tensors:
        if isinstance(t, list):
            for i, part in enumerate(t):
                writer.write_chunk(name, part, last=i == len(t) - 1)
        else:
            writer.write(name, t)
        if report:
            report(sum(p.numel() * p.element_size() for p in (t if isinstance(t, list) else [t])))


ROW_CHUNK_BYTES = 64 * 1024 * 1024
IN_FLIGHT_BYTES = 512 * 1024 * 1024


class InFlight:
    """Source tensors queued to the rank writers and not yet written (they pin their memory).

    The reader runs ahead of the writers by at most IN_FLIGHT_BYTES (or one tensor, if larger), so
    a rank writer that finishes a tensor early starts the next instead of waiting for the other
    ranks, while peak memory stays max(largest tensor, IN_FLIGHT_BYTES), whatever the layer count.
    """

    def __init__(self, writers: list[StreamingSafetensorsWriter]):
        self.writers = writers
        self.pending: deque[tuple[list, int]] = deque()
        self.bytes = 0

    def admit(self, nbytes: int) -> None:
        """Wait until `nbytes` more may be read."""
        while self.pending and self.bytes + nbytes > IN_FLIGHT_BYTES:
            events, n = self.pending.popleft()
            for ev in events:
                ev.wait()
            self.bytes -= n
        for w in self.writers:
            w.check()

    def queued(self, nbytes: int) -> None:
        """`nbytes` were handed to every writer (the caller dropped its own references)."""
        self.pending.append(([w.mark() for w in self.writers], nbytes))
        self.bytes += nbytes


def streams_by_rows(rule: Rule, src: SourceWeights, q: QuantSettings) -> bool:
    """Row-contiguous pieces copied as they are (no cast, no quantization): never hold the whole tensor.

    The embedding and lm_head of Super-49B are 2.1 GB each; reading them in row chunks keeps the
    peak memory at the largest tensor that has to be cut across its columns (dense / proj).
    """
    from nemo_trt.build.convert.weight_map import Split

    if rule.split not in (Split.REPLICATE, Split.COL, Split.VOCAB) or weight_dtype(rule, q) == fp8.FP8:
        return False
    info = src.ckpt.tensors[rule.sources[0]]
    return len(info.shape) == 2 and not src.is_fp8(rule.sources[0]) and \
        DTYPE_OF_ST.get(info.dtype) == q.torch_dtype


def copy_rows(rule: Rule, src: SourceWeights, job: Job, writers: dict, report: Callable[[int], None] | None,
              inflight: InFlight) -> None:
    from nemo_trt.build.convert.weight_map import Split

    name = rule.sources[0]
    total_rows, width = src.ckpt.tensors[name].shape
    per_rank = rule.shape[0]
    row_bytes = width * torch.empty((), dtype=job.quant.torch_dtype).element_size()
    step = max(1, ROW_CHUNK_BYTES // row_bytes)
    # rows of the source each rank takes: all of them (replicated) or its own slice (+ zero padding)
    spans = {r: (0, total_rows) if rule.split is Split.REPLICATE else (r * per_rank, (r + 1) * per_rank)
             for r in job.tp_ranks}
    for offset in range(0, per_rank, step):
        held = step * row_bytes * (1 if rule.split is Split.REPLICATE else len(job.tp_ranks))
        inflight.admit(held)
        if rule.split is Split.REPLICATE:  # one read serves every rank
            chunk = src.read(name, (offset, min(offset + step, total_rows)))
            for r in job.tp_ranks:
                writers[r].write_chunk(rule.name, chunk, last=offset + step >= per_rank)
        else:
            for r in job.tp_ranks:
                a = spans[r][0] + offset
                b = min(a + step, spans[r][1])
                stop = min(b, total_rows)
                chunk = src.read(name, (min(a, stop), stop))
                if stop - min(a, stop) < b - a:  # vocabulary padding rows are zeros
                    chunk = torch.cat([chunk, chunk.new_zeros((b - a - chunk.shape[0], width))], 0)
                writers[r].write_chunk(rule.name, chunk, last=offset + step >= per_rank)
        if report:
            report(chunk.numel() * chunk.element_size() * len(job.tp_ranks))
        del chunk  # drop our reference before the next read: the writers hold what they still need
        inflight.queued(held)


def _run_job_in_worker(job: Job, queue) -> dict[str, str]:
    torch.set_num_threads(1)
    return run_job(job, report=(lambda n: queue.put(n)) if queue is not None else None)


def plan_jobs(tp: int, pp: int, workers: int, checkpoint: str, out_dir: str, q: QuantSettings) -> list[Job]:
    """One job per PP stage; with more workers than stages, a stage's TP ranks are shared out."""
    per_stage = max(1, min(tp, -(-workers // pp)))
    jobs = []
    for s in range(pp):
        groups = [tuple(range(tp))[i::per_stage] for i in range(per_stage)]
        jobs += [Job(checkpoint, out_dir, tp, pp, s, g, q) for g in groups if g]
    return jobs


def total_bytes(spec: ModelSpec, tp: int, pp: int, q: QuantSettings) -> int:
    return sum(e.nbytes for r in range(tp * pp) for _, es in rank_entries(spec, RankMapping(tp, pp, r), q) for e in es)


def write_rank_files(jobs: list[Job], workers: int, report: Callable[[int], None] | None) -> dict[str, str]:
    if workers <= 1 or len(jobs) == 1:
        hashes: dict[str, str] = {}
        for job in jobs:
            hashes.update(run_job(job, report))
        return hashes
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("spawn")  # fork after torch has started its thread pools can deadlock
    with ctx.Manager() as manager:
        q = manager.Queue() if report else None
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
            futures = [pool.submit(_run_job_in_worker, job, q) for job in jobs]
            while not all(f.done() for f in futures):
                if q is not None and report is not None:
                    try:
                        report(q.get(timeout=0.2))
                    except queue_mod.Empty:
                        pass
                else:
                    time.sleep(0.2)
            hashes = {}
            for f in futures:
                hashes.update(f.result())  # re-raises a worker's NemoTrtError
            while q is not None and report is not None and not q.empty():
                report(q.get())
            return hashes


def write_config(directory: Path, config: dict) -> str:
    import hashlib

    raw = (json.dumps(config, indent=2) + "\n").encode()
    try:
        (directory / "config.json").write_bytes(raw)
    except OSError as exc:
        raise disk_error(directory / "config.json", exc) from exc
    return hashlib.sha256(raw).hexdigest()
