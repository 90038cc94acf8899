"""The trained tiny DeciLM through the converter: TP 1/2/4/8 and PP 2, BF16 and FP8.

BF16: `verify` passes (bit-exact tensors) and the reference model loaded from the converted
checkpoint reproduces the HF model's greedy tokens. Checked teacher-forced (one forward pass over
prompt + the HF model's greedy continuation; every next-token argmax must equal the HF token),
which is equivalent to comparing greedy generations and much cheaper with a 128k vocabulary.
FP8 (calibrated on the built-in prompts): `verify` passes with its stated bounds (per-tensor
relative error <= 1/16, logits min cosine >= 0.99, top-1 agreement >= 0.90), and >= 90% of the HF
greedy tokens of the reasoning-protocol answers are reproduced.
"""
from __future__ import annotations

import pytest
import torch

from nemo_trt.build.convert import convert_checkpoint, verify_checkpoint
from nemo_trt.reference import ReferenceModel


@pytest.fixture(scope="module")
def greedy_cases(tiny_checkpoint_dir):
    """(prompt ids, HF greedy continuation) for a thinking-on and a thinking-off prompt."""
    from nemo_trt.build.tiny import HELD_OUT_QUESTIONS, prompt_ids, training_examples

    hf = ReferenceModel.from_hf(tiny_checkpoint_dir)
    cases = []
    for ids in (prompt_ids(training_examples()[0].question, True), prompt_ids(HELD_OUT_QUESTIONS[0], False)):
        cases.append((ids, hf.generate(ids, 16, stop_ids=[128009])))
    return cases


def _teacher_forced_agreement(model: ReferenceModel, cases) -> float:
    hits = total = 0
    for prompt, continuation in cases:
        logits = model.logits(prompt + continuation)
        predicted = logits[len(prompt) - 1: len(prompt) - 1 + len(continuation)].argmax(-1)
        hits += int((predicted == torch.tensor(continuation)).sum())
        total += len(continuation)
    return hits / total


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (4, 1), (8, 1), (2, 2)])
def test_tiny_bf16_conversion_reproduces_greedy_tokens(tmp_path, tiny_checkpoint_dir, greedy_cases, tp, pp):
    out = convert_checkpoint(tiny_checkpoint_dir, tmp_path / "out", tp=tp, pp=pp, progress=False).output
    report = verify_checkpoint(tiny_checkpoint_dir, out, logits=False)
    assert report.ok, report.problems
    assert _teacher_forced_agreement(ReferenceModel.from_converted(out), greedy_cases) == 1.0


def test_tiny_fp8_conversion_stays_within_tolerance(tmp_path, tiny_checkpoint_dir, greedy_cases):
    out = convert_checkpoint(tiny_checkpoint_dir, tmp_path / "out", tp=2, pp=2, precision="fp8",
                             kv_cache_dtype="fp8", progress=False).output
    report = verify_checkpoint(tiny_checkpoint_dir, out, prompts=2)
    assert report.ok, report.problems
    assert report.logits["min_cosine"] >= 0.99 and report.logits["top1_agreement"] >= 0.90
    assert report.logits["tokenization"] == "chat-template"
    assert 0 < report.worst[0].rel_error <= 1 / 16
    assert _teacher_forced_agreement(ReferenceModel.from_converted(out), greedy_cases) >= 0.90
