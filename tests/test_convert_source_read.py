"""SourceWeights.read: per-tensor copy-on-write mappings equal the bytes on disk, are private, and the
unaligned fallback (preadv into a buffer) reads the same bytes; pieces_for_rank concatenates to the rank tensor."""
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
