"""Layer-by-layer FP8 calibration: same ranges as the whole-model forward, bounded memory, cache, refusals.

The whole-model path (`--calib-method whole`) is the reference: both paths run the same
micro-batches through the same reference-model modules, so ranges and final hidden states are
compared bit for bit (float32 on CPU), on every DeciLM block kind, a Llama model and the tiny model.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from nemo_trt.build import calibration_plan as cp
from nemo_trt.build.convert import calibrate as cal
from nemo_trt.build.convert import convert_checkpoint
from nemo_trt.build.convert import layerwise as lw
from nemo_trt.build.convert.prompts import DEFAULT_PROMPTS, calibration_tokens
from nemo_trt.build.convert.source import SourceWeights
from nemo_trt.cli import main
from nemo_trt.errors import NemoTrtError

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Every test calibrates into its own cache (session fixtures, set up before this, keep theirs)."""
    monkeypatch.setenv("NEMO_TRT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def both_paths(src_dir: Path, budget: int = cp.MICRO_BATCH_BYTES["cpu"], resident: bool = False, kv: bool = True,
               prompts: int = len(DEFAULT_PROMPTS)):
    """(layer-wise recorder, whole recorder, layer-wise hidden, whole hidden, batches) on CPU float32."""
    src = SourceWeights(src_dir)
    tokens, _ = calibration_tokens(src.directory, list(DEFAULT_PROMPTS[:prompts]), src.spec.vocab_size)
    batches = lw.make_batches(tokens, src.spec, 4, budget)
    a, b = lw.RangeRecorder(src.spec.head_dim, kv), lw.RangeRecorder(src.spec.head_dim, kv)
    ha = lw.forward_layerwise(lw.LayerLoader(src, CPU, torch.float32, resident=resident), batches, a)
    hb = lw.forward_whole(lw.whole_model(src, CPU, torch.float32), batches, b)
    return a, b, ha, hb, batches


def assert_identical(a, b, ha, hb, spec):
    linears = {n.rsplit(".", 1)[0] for n, s in spec.hf_tensor_shapes().items()
               if n.startswith("model.layers.") and len(s) == 2}
    assert set(a.act_amax) == linears  # every linear of every block kind has a range
    assert a.act_amax == b.act_amax  # bit-identical floats, not approximately
    assert set(a.kv_amax) == {layer.index for layer in spec.attention_layers}
    assert a.kv_amax == b.kv_amax
    assert all(v > 0 for v in a.act_amax.values())
    for x, y in zip(ha, hb):
        assert torch.equal(x, y)


def test_layerwise_equals_whole_model_on_every_block_kind(convert_source):
    a, b, ha, hb, batches = both_paths(convert_source)
    assert_identical(a, b, ha, hb, SourceWeights(convert_source).spec)
    assert len(batches) == 1


def test_layerwise_equals_whole_model_with_many_micro_batches(convert_source):
    # a budget of one prompt per micro-batch: padding differs per batch, ranges still identical
    a, b, ha, hb, batches = both_paths(convert_source, budget=1, prompts=6)
    assert len(batches) == 6
    assert_identical(a, b, ha, hb, SourceWeights(convert_source).spec)


def test_resident_layers_as_on_cuda_equal_lazy_linears(convert_source):
    # the CUDA path keeps the whole layer on the device: here the same code on the CPU
    lazy = both_paths(convert_source)[0]
    resident, whole, hr, hw, _ = both_paths(convert_source, resident=True)
    assert resident.act_amax == lazy.act_amax == whole.act_amax and resident.kv_amax == lazy.kv_amax
    assert all(torch.equal(x, y) for x, y in zip(hr, hw))


def test_layerwise_equals_whole_model_on_a_llama_checkpoint(tmp_path):
    from fixtures.convert_models import llama_config, write_random

    src = write_random(tmp_path / "llama", llama_config(layers=3))
    a, b, ha, hb, _ = both_paths(src)
    assert_identical(a, b, ha, hb, SourceWeights(src).spec)


def test_layerwise_equals_whole_model_on_the_tiny_model(tiny_checkpoint_dir):
    # real tokenizer and chat template, full 128,256-token vocabulary (embedding rows read sparsely)
    a, b, ha, hb, batches = both_paths(tiny_checkpoint_dir)
    assert_identical(a, b, ha, hb, SourceWeights(tiny_checkpoint_dir).spec)
    assert sum(bt.tokens for bt in batches) > 200


def test_padding_never_reaches_real_tokens(convert_source):
    """A prompt's final hidden states do not depend on which prompts share its micro-batch."""
    src = SourceWeights(convert_source)
    tokens, _ = calibration_tokens(src.directory, list(DEFAULT_PROMPTS), src.spec.vocab_size)
    model = lw.whole_model(src, CPU, torch.float32)
    rec = lw.RangeRecorder(src.spec.head_dim, True)
    together = dict(lw.iter_real(lw.forward_whole(model, lw.make_batches(tokens, src.spec, 4, 1 << 40), rec),
                                 lw.make_batches(tokens, src.spec, 4, 1 << 40)))
    for i, ids in enumerate(tokens[:4]):
        alone = model.hidden_states(torch.tensor([ids]))[0]
        assert torch.allclose(together[i], alone, rtol=1e-5, atol=1e-5)


def test_one_linear_in_memory_at_a_time_on_cpu(convert_source):
    src = SourceWeights(convert_source)
    loader = lw.LayerLoader(src, CPU, torch.float32, resident=False)
    seen = []
    for layer_spec in src.spec.layers:
        layer = loader.layer(layer_spec)
        linears = [m for m in layer.modules() if isinstance(m, nn.Linear)]
        assert all(m.weight.is_meta for m in linears)  # nothing loaded before it runs

        def count(_m, _a, linears=linears):
            seen.append(sum(not m.weight.is_meta for m in linears))
        for m in linears:
            m.register_forward_pre_hook(count)  # runs after the loader's own pre-hook
        h = torch.randn(1, 5, src.spec.hidden_size)
        from nemo_trt.reference.model import rope_and_mask, rotary_embedding
        layer(h, *rope_and_mask(rotary_embedding(src.spec), h), None)
        assert all(m.weight.is_meta for m in linears)  # and released after
    assert seen and set(seen) == {1}


def test_embedding_reads_only_the_rows_it_needs(convert_source, monkeypatch):
    src = SourceWeights(convert_source)
    reads = []
    real_read = src.read
    monkeypatch.setattr(src, "read", lambda name, rows=None: reads.append((name, rows)) or real_read(name, rows))
    ids = torch.tensor([[5, 6, 7, 100, 5], [6, 200, 0, 0, 0]])
    out = lw.LayerLoader(src, CPU, torch.float32, resident=False).embed(ids)
    table = real_read("model.embed_tokens.weight").float()
    assert torch.equal(out, nn.functional.embedding(ids, table))
    assert reads == [("model.embed_tokens.weight", r) for r in ((0, 1), (5, 8), (100, 101), (200, 201))]


def test_micro_batches_are_longest_first_and_under_budget(convert_source):
    spec = SourceWeights(convert_source).spec
    lengths = [3, 50, 7, 50, 20, 1]
    budget = cp.batch_bytes(spec, 4, 2, 50)
    groups = cp.pack(lengths, spec, 4, budget)
    assert groups == [[1, 3], [4, 2, 0, 5]]  # 2 x 50 padded tokens, then 4 x 20
    assert all(cp.batch_bytes(spec, 4, len(g), lengths[g[0]]) <= budget for g in groups)
    batches = lw.make_batches([[9] * n for n in lengths], spec, 4, budget)
    assert [b.prompts for b in batches] == [(1, 3), (4, 2, 0, 5)]
    assert batches[1].ids.shape == (4, 20) and batches[1].tokens == 31
    assert batches[1].real[1].tolist() == [True] * 7 + [False] * 13
    assert cp.pack(lengths, spec, 4, 1) == [[1], [3], [4], [2], [0], [5]]  # over budget alone: alone


# ---- the calibrate() API: settings, cache, progress, interruption -------------------------------------
def test_calibrate_layerwise_and_whole_agree_and_record_settings(convert_source):
    prompts = list(DEFAULT_PROMPTS[:6])
    a = cal.calibrate(convert_source, prompts)
    b = cal.calibrate(convert_source, prompts, method="whole")
    assert a.act_amax == b.act_amax and a.kv_amax == b.kv_amax
    assert a.settings["method"] == "layerwise" and b.settings["method"] == "whole"
    assert a.settings["micro_batch_bytes"] == cp.MICRO_BATCH_BYTES["cpu"] and a.settings["tokens"] > 0
    assert a.stats["cached"] is False and a.stats["micro_batches"] == 1 and a.stats["tokens_per_s"] > 0


def test_results_are_cached_by_source_prompts_and_settings(convert_source, own_cache, monkeypatch):
    prompts = list(DEFAULT_PROMPTS[:3])
    first = cal.calibrate(convert_source, prompts, kv=True)
    entries = list((own_cache / "calibration").glob("*.json"))
    assert len(entries) == 1 and not list((own_cache / "calibration").glob(".*partial"))

    def boom(*_a, **_k):
        raise AssertionError("recalibrated although the result is cached")
    monkeypatch.setattr(cal, "forward_layerwise", boom)
    again = cal.calibrate(convert_source, prompts, kv=True)
    assert again.stats["cached"] is True
    assert again.act_amax == first.act_amax and again.kv_amax == first.kv_amax and again.settings == first.settings
    with pytest.raises(AssertionError, match="recalibrated"):  # other prompts, other key
        cal.calibrate(convert_source, prompts[:2], kv=True)
    with pytest.raises(AssertionError, match="recalibrated"):  # other settings (KV ranges too), other key
        cal.calibrate(convert_source, prompts, kv=False)
    entries[0].write_text("{not json")  # a damaged entry is recomputed, never trusted
    monkeypatch.undo()
    monkeypatch.setenv("NEMO_TRT_CACHE", str(own_cache))
    assert cal.calibrate(convert_source, prompts, kv=True).stats["cached"] is False


def test_progress_reports_every_layer(convert_source, capsys):
    calls = []
    src = SourceWeights(convert_source)
    tokens, _ = calibration_tokens(src.directory, list(DEFAULT_PROMPTS[:2]), src.spec.vocab_size)
    batches = lw.make_batches(tokens, src.spec, 4, 1 << 30)
    lw.forward_layerwise(lw.LayerLoader(src, CPU, torch.float32, resident=False), batches,
                         lw.RangeRecorder(src.spec.head_dim, True), lambda i, layer, n: calls.append((i, n)))
    assert calls == [(i, sum(len(t) for t in tokens)) for i in range(src.spec.num_layers)]
    lines: list[str] = []
    cal.calibrate(convert_source, list(DEFAULT_PROMPTS[:2]), progress=True, cache=False, report=lines.append)
    assert len(lines) == src.spec.num_layers and lines[-1].startswith(f"layer {src.spec.num_layers}/")
    assert "tok/s per layer" in lines[0] and "attention+mlp" in lines[0]


def test_ctrl_c_during_calibration_leaves_nothing(convert_source, tmp_path, own_cache, monkeypatch):
    real = lw.forward_layerwise

    def interrupted(loader, batches, recorder, on_layer=None):
        def stop(i, layer, n):
            if i == 2:
                raise KeyboardInterrupt
        return real(loader, batches, recorder, stop)
    monkeypatch.setattr(cal, "forward_layerwise", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(convert_source, out, tp=1, precision="fp8", progress=False)
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    assert not (own_cache / "calibration").exists() or not list((own_cache / "calibration").iterdir())


def test_failed_conversion_does_not_recalibrate(convert_source, tmp_path, monkeypatch):
    from nemo_trt.build.convert import api

    out = tmp_path / "out"
    real_write = api.write_rank_files

    def disk_full(*_a, **_k):
        raise NemoTrtError("no space left on device (simulated)", "free disk space")
    monkeypatch.setattr(api, "write_rank_files", disk_full)
    with pytest.raises(NemoTrtError, match="no space"):
        convert_checkpoint(convert_source, out, tp=1, precision="fp8", kv_cache_dtype="fp8", progress=False)
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    monkeypatch.setattr(api, "write_rank_files", real_write)
    monkeypatch.setattr(cal, "forward_layerwise", lambda *a, **k: pytest.fail("calibrated twice"))
    result = convert_checkpoint(convert_source, out, tp=1, precision="fp8", kv_cache_dtype="fp8", progress=False)
    assert result.calibration["stats"]["cached"] is True
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calibration_result"]["stats"]["cached"] is True


def test_layerwise_and_whole_conversions_write_identical_rank_files(convert_source, tmp_path, capsys):
    outs = {}
    for method in ("layerwise", "whole"):
        outs[method] = tmp_path / method
        assert main(["convert", "--checkpoint", str(convert_source), "--output", str(outs[method]), "--tp", "2",
                     "--precision", "fp8", "--kv-cache-dtype", "fp8", "--calib-method", method, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["calibration"]["method"] == method
    for rank in ("rank0.safetensors", "rank1.safetensors"):
        assert (outs["layerwise"] / rank).read_bytes() == (outs["whole"] / rank).read_bytes()


# ---- refused up front --------------------------------------------------------------------------------
def test_calibration_that_does_not_fit_is_refused_before_loading(convert_source, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cp, "available_host_bytes", lambda: 1000)
    monkeypatch.setattr(lw, "LayerLoader", lambda *a, **k: pytest.fail("loaded weights before the memory check"))
    out = tmp_path / "out"
    for method in ("layerwise", "whole"):
        rc = main(["convert", "--checkpoint", str(convert_source), "--output", str(out), "--tp", "1",
                   "--precision", "fp8", "--calib-method", method])
        err = capsys.readouterr().err
        assert rc == 2 and f"FP8 calibration ({method} on cpu" in err and "GB of RAM" in err
        assert "--device cuda" in err and cp.PREQUANTIZED in err
        assert ("layer by layer" in err) == (method == "whole")
        assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_modelopt_gets_the_same_memory_check(convert_source, tmp_path, monkeypatch):
    monkeypatch.setattr(cal, "_modelopt", lambda: None)  # as if nvidia-modelopt were installed
    monkeypatch.setattr(cp, "available_host_bytes", lambda: 1000)
    with pytest.raises(NemoTrtError, match=r"FP8 calibration \(modelopt on cpu") as exc:
        convert_checkpoint(convert_source, tmp_path / "out", tp=1, precision="fp8", calibrator="modelopt",
                           progress=False)
    assert "layer by layer" in exc.value.fix and exc.value.exit_code == 2
    assert not (tmp_path / "out").exists()


def test_cuda_route_refuses_when_the_gpu_is_too_small(convert_source, monkeypatch):
    spec = SourceWeights(convert_source).spec
    est = cp.estimate_route(spec, [40, 30], "whole", "cuda", ["H100"])
    monkeypatch.setattr(cp, "available_device_bytes", lambda: est.device_bytes - 1)
    with pytest.raises(NemoTrtError, match="GB of GPU memory") as exc:
        cp.require_fits(est, alternatives=[cp.estimate_route(spec, [40, 30], "layerwise", d) for d in cp.DEVICES])
    assert "layer by layer on the CPU" in exc.value.fix
    monkeypatch.setattr(cp, "available_device_bytes", lambda: est.device_bytes)
    cp.require_fits(est)


# ---- memory: bounded for Super-49B-shaped layers, flat in depth -----------------------------------------
def super_spec(repeat: int = 1):
    from nemo_trt.build.spec import ModelSpec
    from nemo_trt.model_facts import resolve_model

    cfg = json.loads((resolve_model(None) / "config.json").read_text())
    cfg["block_configs"] = cfg["block_configs"] * repeat
    cfg["num_hidden_layers"] = len(cfg["block_configs"])
    return ModelSpec.from_config(cfg)


@pytest.mark.parametrize("lengths", [[40] * 16, [512] * 16, list(range(20, 520, 31))])
def test_super49b_layerwise_estimate_is_under_3gb_whatever_the_depth(lengths):
    one, two = super_spec(1), super_spec(2)
    a = cp.estimate_route(one, lengths, "layerwise", "cpu")
    b = cp.estimate_route(two, lengths, "layerwise", "cpu")
    assert a.host_bytes <= 3e9 and a.host_bytes == b.host_bytes  # depth does not matter
    assert b.tflop == pytest.approx(2 * a.tflop, rel=1e-4)       # time does (linearly)
    whole = cp.estimate_route(one, lengths, "whole", "cpu")
    assert whole.host_bytes > 199e9  # 49.9B float32 parameters
    gpu = cp.estimate_route(one, lengths, "layerwise", "cuda", ["H100"])
    assert gpu.device_bytes < 8e9 and cp.estimate_route(one, lengths, "whole", "cuda").device_bytes > 99e9


_PEAK = r"""
import json, sys, torch
from nemo_trt.build.convert import layerwise as lw
from nemo_trt.build.convert.prompts import DEFAULT_PROMPTS, calibration_tokens
from nemo_trt.build.convert.source import SourceWeights
import nemo_trt.reference.model  # transformers' Llama modules: loaded before the baseline
src = SourceWeights(sys.argv[1])
tokens, _ = calibration_tokens(src.directory, list(DEFAULT_PROMPTS[:4]), src.spec.vocab_size)
batches = lw.make_batches(tokens, src.spec, 4, 1 << 30)
def rss(key):
    return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) * 1024
growth = {}
base = rss("VmRSS")  # layer by layer first, then the whole model (its peak is the larger one)
rec = lw.RangeRecorder(src.spec.head_dim, True)
lw.forward_layerwise(lw.LayerLoader(src, torch.device("cpu"), torch.float32, resident=False), batches, rec)
growth["layerwise"] = rss("VmHWM") - base
base = rss("VmRSS")
model = lw.whole_model(src, torch.device("cpu"), torch.float32)
lw.forward_whole(model, batches, lw.RangeRecorder(src.spec.head_dim, True))
growth["whole"] = rss("VmHWM") - base
print(json.dumps(growth))
"""


@pytest.mark.slow
def test_layerwise_peak_memory_is_flat_when_the_layers_double(tmp_path):
    """Measured (VmHWM of a fresh process): doubling the depth adds nothing layer by layer, and adds the
    extra layers' float32 weights to the whole-model path (so the measurement can see growth)."""
    from fixtures.convert_models import deci_config, write_random

    blocks = [(2, 4.0), ("no_op", 2.0), (4, 4.0)] * 3
    growth = {}
    for depth, bl in (("single", blocks), ("double", blocks * 2)):
        src = write_random(tmp_path / depth, deci_config(bl, hidden=512, heads=8, vocab=300), max_shard_bytes=1 << 28)
        out = subprocess.run([sys.executable, "-c", _PEAK, str(src)], check=True, capture_output=True, text=True)
        for method, value in json.loads(out.stdout.strip().splitlines()[-1]).items():
            growth[depth, method] = value
    extra_weights = sum(4 * n for n in _layer_params(tmp_path / "single"))  # float32 bytes of the added layers
    assert growth["double", "whole"] - growth["single", "whole"] > 0.6 * extra_weights, growth
    assert growth["double", "layerwise"] - growth["single", "layerwise"] < 0.15 * extra_weights, growth
    assert growth["double", "layerwise"] < 0.5 * growth["double", "whole"], growth


def _layer_params(src: Path) -> list[int]:
    import math

    spec = SourceWeights(src).spec
    return [math.prod(s) for n, s in spec.hf_tensor_shapes().items() if n.startswith("model.layers.")]


@pytest.mark.gpu
def test_cuda_layerwise_calibration_matches_the_whole_model_and_cpu(convert_source):
    cpu = cal.calibrate(convert_source, list(DEFAULT_PROMPTS[:6]), cache=False)
    gpu = cal.calibrate(convert_source, list(DEFAULT_PROMPTS[:6]), device="cuda", cache=False)
    whole = cal.calibrate(convert_source, list(DEFAULT_PROMPTS[:6]), device="cuda", method="whole", cache=False)
    assert gpu.act_amax == whole.act_amax and gpu.kv_amax == whole.kv_amax  # same kernels, same shapes
    for name, value in cpu.act_amax.items():  # bfloat16 on the GPU vs float32 on the CPU
        assert gpu.act_amax[name] == pytest.approx(value, rel=0.05), name
    torch.cuda.reset_peak_memory_stats()
    src = SourceWeights(convert_source)
    loader = lw.LayerLoader(src, torch.device("cuda"), torch.bfloat16, resident=True)
    layer = loader.layer(src.spec.layers[0])
    on_device = sum(p.numel() * p.element_size() for p in layer.parameters())
    assert all(p.is_cuda for p in layer.parameters()) and on_device > 0
