"""SourceWeights.read: per-tensor copy-on-write mappings equal the bytes on disk, are private, and the
unaligned fallback (preadv into a buffer) reads the same bytes; pieces_for_rank concatenates to the rank tensor."""
import pytest
import torch
from safetensors import safe_open

from nemo_trt.build.convert import source as source_mod
from nemo_trt.build.convert.mapping import RankMapping
from nemo_trt.build.convert.source import SourceWeights
from nemo_trt.build.convert.weight_map import Split, pieces_for_rank, rank_rules


def _reference(directory, name):
    src = SourceWeights(directory)
    with safe_open(str(directory / src.ckpt.tensors[name].shard), "pt") as f:
        return f.get_tensor(name)


def test_mapped_reads_match_safetensors_and_stay_private(convert_source):
    src = SourceWeights(convert_source)
    for name in list(src.ckpt.tensors)[:12]:
        t = src.read(name)
        assert torch.equal(t, _reference(convert_source, name)), name
    name = next(n for n, i in src.ckpt.tensors.items() if len(i.shape) == 2)
    t = src.read(name)
    rows = src.read(name, (1, 3))
    assert torch.equal(rows, t[1:3])
    t.zero_()  # copy-on-write: writing to a read tensor never reaches the checkpoint
    assert torch.equal(src.read(name), _reference(convert_source, name))
    assert not torch.equal(src.read(name), t)


def test_unaligned_fallback_reads_the_same_bytes(convert_source, monkeypatch):
    src = SourceWeights(convert_source)
    name = next(n for n, i in src.ckpt.tensors.items() if len(i.shape) == 2)
    mapped = src.read(name)
    calls = []
    real_read = source_mod._read
    monkeypatch.setattr(source_mod, "_map", lambda *a: None)  # as for a range not aligned to its dtype
    monkeypatch.setattr(source_mod, "_read", lambda *a: calls.append(a) or real_read(*a))
    assert torch.equal(src.read(name), mapped) and calls
    monkeypatch.undo()
    with open(convert_source / src.ckpt.tensors[name].shard, "rb") as fh:
        assert source_mod._map(fh, 4097, 16, 2) is None  # odd offset for a 2-byte dtype
        assert torch.equal(source_mod._map(fh, 4096, 16, 2), real_read(fh, 4096, 16, "p", "n", "s"))


def test_pieces_concatenate_to_the_rank_tensor(convert_source):
    src = SourceWeights(convert_source)
    spec = src.spec
    for tp in (1, 2, 4):
        seen = set()
        for rule in rank_rules(spec, RankMapping(tp, 1, 0)):
            if rule.split in seen or rule.split is Split.REPLICATE:
                continue
            seen.add(rule.split)
            sources = [src.read(n) for n in rule.sources]
            for r in range(tp):
                pieces = pieces_for_rank(rule, sources, tp, r)
                whole = torch.cat(pieces, 0)
                assert tuple(whole.shape) == rule.shape
                if rule.split is Split.QKV:
                    assert len(pieces) == 3 and all(p.shape[1:] == whole.shape[1:] for p in pieces)


def test_row_split_pieces_are_gather_written_byte_exact(tmp_path, monkeypatch):
    import hashlib

    from safetensors.torch import save_file

    from nemo_trt.build.convert import writer as writer_mod
    from nemo_trt.build.convert.writer import Entry, StreamingSafetensorsWriter

    real = writer_mod.os.writev

    def short_writev(fd, views):  # a regular file may take fewer bytes than asked: resume mid-row
        return real(fd, [bytes(memoryview(views[0])[:max(1, len(views[0]) // 3)])])

    monkeypatch.setattr(writer_mod.os, "writev", short_writev)
    monkeypatch.setattr(writer_mod, "_SLICE", 40)  # several writev batches per piece
    full = torch.arange(6 * 10, dtype=torch.float32).reshape(6, 10).to(torch.bfloat16)
    piece = full[:, 5:]  # a row-split piece: rows contiguous, strided between rows
    assert not piece.is_contiguous()
    entries = [Entry("a", torch.bfloat16, (6, 5)), Entry("b", torch.bfloat16, (3, 10))]
    w = StreamingSafetensorsWriter(tmp_path / "ours.safetensors", entries)
    w.write("a", piece)
    w.write("b", full[::2])  # rows strided by two rows: still one contiguous row each
    digest = w.close()
    save_file({"a": piece.contiguous(), "b": full[::2].contiguous()}, tmp_path / "ref.safetensors")
    ours = (tmp_path / "ours.safetensors").read_bytes()
    ref = (tmp_path / "ref.safetensors").read_bytes()
    data = lambda raw: raw[8 + int.from_bytes(raw[:8], "little"):]  # noqa: E731
    assert data(ours) == data(ref) == piece.contiguous().view(torch.uint8).numpy().tobytes() + \
        full[::2].contiguous().view(torch.uint8).numpy().tobytes()
    from safetensors import safe_open
    with safe_open(str(tmp_path / "ours.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("a"), piece) and torch.equal(f.get_tensor("b"), full[::2])
    assert hashlib.sha256(ours).hexdigest() == digest


@pytest.mark.parametrize("budget", [1, 1 << 40])  # lock-step per tensor / writers run freely
def test_in_flight_budget_never_changes_the_bytes(tmp_path, convert_source, converted, monkeypatch, budget):
    import json

    from nemo_trt.build.convert import converter as conv
    from nemo_trt.build.convert import convert_checkpoint

    monkeypatch.setattr(conv, "IN_FLIGHT_BYTES", budget)
    monkeypatch.setattr(conv, "ROW_CHUNK_BYTES", 7 * 96)  # many chunks in flight at once
    out = convert_checkpoint(convert_source, tmp_path / "out", tp=2, progress=False)
    reference = json.loads((converted(2) / "manifest.json").read_text())["files"]
    assert out.files == {n: f["sha256"] for n, f in reference.items()}


def test_in_flight_waits_for_the_oldest_marks():
    from nemo_trt.build.convert import converter as conv

    class Writer:
        def __init__(self):
            self.events = []

        def mark(self):
            import threading
            self.events.append(threading.Event())
            return self.events[-1]

        def check(self):
            pass

    w = Writer()
    f = conv.InFlight([w])
    f.admit(conv.IN_FLIGHT_BYTES // 2)
    f.queued(conv.IN_FLIGHT_BYTES // 2)
    f.admit(conv.IN_FLIGHT_BYTES // 2)  # fits: no wait
    f.queued(conv.IN_FLIGHT_BYTES // 2)
    w.events[0].set()
    f.admit(1)  # over budget: waits for the oldest (already written) and frees its bytes
    assert f.bytes == conv.IN_FLIGHT_BYTES // 2 and len(f.pending) == 1
