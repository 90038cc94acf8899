"""serve/reference_backend.py: tensor parsing and the fair round-robin scheduler.

A tiny deterministic stand-in model exercises the scheduler logic exactly; the real
reference DeciLM (nemo_trt.reference) is exercised at the end when it is importable.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from nemo_trt.serve import reference_backend as rb

VOCAB = 50


class ToySession:
    """Greedy: next = (last + 1) % VOCAB; sampled: a per-session numpy Generator."""

    def __init__(self, model, prompt, sampling, stop_ids, max_new, return_none_at_end=False):
        self.model, self.history, self.sampling = model, list(prompt), sampling
        self.stop_ids, self.max_new, self.generated = set(stop_ids), max_new, 0
        self.finished, self.finish_reason = False, None
        self.rng = np.random.default_rng(sampling["seed"])
        self.return_none_at_end = return_none_at_end
        self.tag = prompt[0]

    def step(self):
        self.model.log.append(self.tag)
        if self.model.fail_on == self.tag:
            raise RuntimeError("boom")
        if self.finished:
            return None
        if self.return_none_at_end and self.generated >= 2:
            # e.g. a model that notices the end only on the step after the last token
            self.finished, self.finish_reason = True, "stop"
            return None
        if self.sampling["temperature"] > 0:
            token = int(self.rng.integers(0, VOCAB))
        else:
            token = (self.history[-1] + 1) % VOCAB
        self.history.append(token)
        self.generated += 1
        if token in self.stop_ids:
            self.finished, self.finish_reason = True, "stop"
        elif self.generated >= self.max_new and not self.return_none_at_end:
            self.finished, self.finish_reason = True, "length"
        return token


class ToyModel:
    def __init__(self, return_none_at_end=False):
        self.log: list[int] = []
        self.fail_on = None
        self.return_none_at_end = return_none_at_end

    def start_session(self, prompt_ids, sampling, stop_ids, max_new_tokens):
        return ToySession(self, prompt_ids, sampling, stop_ids, max_new_tokens, self.return_none_at_end)


def toy_sampling(request: rb.BackendRequest):
    return {"temperature": request.temperature, "seed": request.seed}


class ListSink:
    def __init__(self, cancel_after: int | None = None, raise_after: int | None = None):
        self.chunks: list[rb.Chunk] = []
        self.errors: list[str] = []
        self.cancelled_final = False
        self.cancel_after, self.raise_after = cancel_after, raise_after
        self.done = threading.Event()

    def send(self, chunk):
        if self.raise_after is not None and len(self.chunks) >= self.raise_after:
            self.done.set()
            raise RuntimeError("client gone")
        self.chunks.append(chunk)
        if chunk.final:
            self.done.set()

    def send_error(self, message):
        self.errors.append(message)
        self.done.set()

    def finish_cancelled(self):
        self.cancelled_final = True
        self.done.set()

    def is_cancelled(self):
        return self.cancel_after is not None and len(self.chunks) >= self.cancel_after

    @property
    def tokens(self):
        return [t for c in self.chunks for t in c.output_ids]


def request(first: int, n: int = 5, **kw) -> rb.BackendRequest:
    return rb.BackendRequest(input_ids=[first, first], max_new_tokens=n, request_id=str(first), **kw)


def run(model, items, max_active=16, before_start=None):
    scheduler = rb.Scheduler(model, toy_sampling, max_active=max_active)
    for req, sink in items:
        scheduler.submit(req, sink)
    if before_start:
        before_start(scheduler)
    scheduler.start()
    try:
        for _, sink in items:
            assert sink.done.wait(10), "request did not finish"
    finally:
        scheduler.stop()
    return scheduler


# --------------------------------------------------------------------------- parsing


def tensors(**kw):
    base = {"input_ids": np.array([[1, 2, 3, 0]], np.int32), "input_lengths": np.array([[3]], np.int32),
            "request_output_len": np.array([[4]], np.int32)}
    base.update(kw)
    return base


def test_parse_request_reads_trtllm_tensors():
    parsed = rb.parse_request(tensors(
        end_id=np.array([[9]], np.int32),
        stop_words_list=np.array([[[7, 5, 6], [1, 3, -1]]], np.int32),
        streaming=np.array([[True]]), temperature=np.array([[0.5]], np.float32),
        runtime_top_k=np.array([[3]], np.int32), seed=np.array([[42]], np.uint64),
        exclude_input_in_output=np.array([[False]]),
    ), "r1")
    assert parsed.input_ids == [1, 2, 3]  # padding after input_lengths dropped
    assert parsed.max_new_tokens == 4 and parsed.streaming and parsed.seed == 42
    assert parsed.stop_sequences == [[7], [5, 6]]
    assert parsed.stop_ids == [7, 9] and parsed.multi_token_stops == [[5, 6]]
    assert parsed.temperature == pytest.approx(0.5) and parsed.top_k == 3
    assert parsed.exclude_input_in_output is False and parsed.request_id == "r1"


def test_parse_request_defaults():
    neutral = tensors(repetition_penalty=np.array([[1.0]], np.float32), min_tokens=np.array([[1]], np.int32))
    assert rb.parse_request(neutral).max_new_tokens == 4  # neutral values of unsupported knobs are fine
    parsed = rb.parse_request(tensors(), default_exclude_input=True)
    assert parsed.temperature == 0.0 and parsed.top_p == 1.0 and not parsed.streaming
    assert parsed.exclude_input_in_output is True and parsed.end_id is None


@pytest.mark.parametrize("change, message", [
    ({"request_output_len": np.array([[0]], np.int32)}, "request_output_len"),
    ({"input_lengths": np.array([[9]], np.int32)}, "input_lengths"),
    ({"beam_width": np.array([[2]], np.int32)}, "beam_width"),
    ({"bad_words_list": np.array([[[3], [1]]], np.int32)}, "bad_words"),
    ({"input_ids": np.array([[1, 2, 3], [1, 2, 3]], np.int32)}, "batch size"),
    ({"temperature": np.array([[-1.0]], np.float32)}, "temperature"),
    ({"stop_words_list": np.array([[[3, 4], [5, -1]]], np.int32)}, "offsets"),
    ({"repetition_penalty": np.array([[1.2]], np.float32)}, "repetition_penalty"),
    ({"presence_penalty": np.array([[0.5]], np.float32)}, "presence_penalty"),
    ({"min_tokens": np.array([[5]], np.int32)}, "min_tokens"),
])
def test_parse_request_rejects_bad_input(change, message):
    with pytest.raises(rb.BadRequest, match=message):
        rb.parse_request(tensors(**change))


def test_parse_request_checks_vocab_and_missing_output_len():
    with pytest.raises(rb.BadRequest, match="out of range"):
        rb.parse_request(tensors(), vocab_size=3)
    inputs = tensors()
    del inputs["request_output_len"]
    with pytest.raises(rb.BadRequest, match="request_output_len"):
        rb.parse_request(inputs)


def test_empty_word_lists():
    assert rb.decode_word_list(np.zeros((1, 2, 0), np.int32)) == []
    assert rb.decode_word_list(None) == []
    assert rb.parse_request(tensors(bad_words_list=np.zeros((1, 2, 0), np.int32))).stop_sequences == []


def test_parameter_placeholders_fall_back():
    params = {"a": {"string_value": "${a}"}, "b": {"string_value": "7"}, "c": {"string_value": ""}}
    assert rb.parameter(params, "a", "d") == "d"
    assert rb.parameter(params, "b", "d") == "7"
    assert rb.parameter(params, "c", "d") == "d"
    assert rb.parameter(params, "missing", "d") == "d"
    assert rb.parse_bool("True") is True and rb.parse_bool("0") is False
    with pytest.raises(ValueError):
        rb.parse_bool("maybe")


# --------------------------------------------------------------------------- scheduler


def test_round_robin_is_fair():
    model = ToyModel()
    items = [(request(10, 4, streaming=True), ListSink()), (request(20, 4, streaming=True), ListSink()),
             (request(30, 4, streaming=True), ListSink())]
    run(model, items)
    assert model.log == [10, 20, 30] * 4  # one step per session per round
    for (req, sink) in items:
        first = req.input_ids[0]
        assert sink.tokens == [first + 1, first + 2, first + 3, first + 4]


def test_max_active_queues_fifo():
    model = ToyModel()
    items = [(request(10, 2), ListSink()), (request(20, 3), ListSink()), (request(30, 2), ListSink())]
    run(model, items, max_active=2)
    # 30 starts only after 10 finishes (after the second round)
    assert model.log == [10, 20, 10, 20, 20, 30, 30]


def test_streaming_one_response_per_token_final_with_last():
    sink = ListSink()
    run(ToyModel(), [(request(10, 3, streaming=True), sink)])
    assert [c.output_ids for c in sink.chunks] == [[11], [12], [13]]
    assert [c.final for c in sink.chunks] == [False, False, True]
    assert [c.num_output_tokens for c in sink.chunks] == [1, 2, 3]
    assert all(c.num_input_tokens == 2 for c in sink.chunks)


def test_session_ending_without_token_sends_empty_final():
    sink = ListSink()
    run(ToyModel(return_none_at_end=True), [(request(10, 5, streaming=True), sink)])
    assert [c.output_ids for c in sink.chunks] == [[11], [12], []]
    assert [c.final for c in sink.chunks] == [False, False, True]


def test_non_streaming_single_response_and_exclude_input():
    excluded, included = ListSink(), ListSink()
    run(ToyModel(), [(request(10, 3), excluded), (request(20, 3, exclude_input_in_output=False), included)])
    assert len(excluded.chunks) == 1 and excluded.chunks[0].final
    assert excluded.tokens == [11, 12, 13]
    assert included.tokens == [20, 20, 21, 22, 23] and included.chunks[0].num_output_tokens == 3


def test_stops_at_end_id_and_stop_words():
    end, single, multi = ListSink(), ListSink(), ListSink()
    run(ToyModel(), [
        (request(10, 20, end_id=13), end),
        (request(20, 20, stop_sequences=[[22]]), single),
        (request(30, 20, stop_sequences=[[32, 33], [40, 41, 99]]), multi),
    ])
    assert end.tokens == [11, 12]  # the end token itself is not returned
    assert single.tokens == [21]
    assert multi.tokens == [31, 32, 33]  # multi-token stop sequences are returned, like TRT-LLM
    assert multi.chunks[-1].num_output_tokens == 3


def test_request_output_len_is_honoured():
    sink = ListSink()
    run(ToyModel(), [(request(10, 7), sink)])
    assert len(sink.tokens) == 7


def test_seed_determinism_under_interleaving():
    sinks = [ListSink() for _ in range(4)]
    reqs = [request(10, 8, temperature=1.0, seed=5), request(20, 8, temperature=1.0, seed=5),
            request(30, 8, temperature=1.0, seed=6), request(40, 8, temperature=1.0, seed=5)]
    run(ToyModel(), list(zip(reqs, sinks)))
    assert sinks[0].tokens == sinks[1].tokens == sinks[3].tokens
    assert sinks[0].tokens != sinks[2].tokens


def test_cancelled_client_is_dropped_others_finish():
    model = ToyModel()
    cancelled, other = ListSink(cancel_after=2), ListSink()
    run(model, [(request(10, 10, streaming=True), cancelled), (request(20, 10, streaming=True), other)])
    assert cancelled.tokens == [11, 12] and cancelled.cancelled_final
    assert len(other.tokens) == 10
    assert model.log.count(10) == 2  # no steps spent on the cancelled session afterwards


def test_stop_request_cancels_by_id():
    model = ToyModel()
    waiting, running = ListSink(), ListSink()
    items = [(request(10, 3), running), (request(20, 3), waiting)]
    run(model, items, max_active=1, before_start=lambda s: s.cancel("20"))
    assert waiting.cancelled_final and not waiting.chunks
    assert len(running.tokens) == 3


def test_client_gone_while_sending_drops_session():
    model = ToyModel()
    gone, other = ListSink(raise_after=1), ListSink()
    run(model, [(request(10, 10, streaming=True), gone), (request(20, 5, streaming=True), other)])
    assert gone.tokens == [11] and len(other.tokens) == 5
    assert model.log.count(10) == 2


def test_model_failure_is_an_error_response_and_scheduler_keeps_going():
    model = ToyModel()
    model.fail_on = 10
    bad, good = ListSink(), ListSink()
    scheduler = run(model, [(request(10, 3), bad), (request(20, 3), good)])
    assert bad.errors and "boom" in bad.errors[0]
    assert good.tokens == [21, 22, 23]
    assert scheduler.num_active == 0


def test_stop_fails_pending_requests():
    scheduler = rb.Scheduler(ToyModel(), toy_sampling)
    sink = ListSink()
    scheduler.submit(request(10, 3), sink)
    scheduler.stop()
    assert sink.errors and "unloaded" in sink.errors[0]
    late = ListSink()
    scheduler.submit(request(20, 3), late)
    assert late.errors


# --------------------------------------------------------------------------- real reference model


def small_deci_model():
    """A random 3-layer DeciLM (GQA, no-op attention, linear FFN) from B's reference code."""
    import torch

    from nemo_trt.build.spec import ModelSpec
    from nemo_trt.reference import ReferenceModel

    blocks = [{"attention": {"no_op": False, "replace_with_linear": False, "n_heads_in_group": 2},
               "ffn": {"no_op": False, "replace_with_linear": False, "ffn_mult": 2.0}},
              {"attention": {"no_op": True, "replace_with_linear": False, "n_heads_in_group": None},
               "ffn": {"no_op": False, "replace_with_linear": True, "ffn_mult": 1.0}},
              {"attention": {"no_op": False, "replace_with_linear": False, "n_heads_in_group": 4},
               "ffn": {"no_op": False, "replace_with_linear": False, "ffn_mult": 1.5}}]
    spec = ModelSpec.from_config({
        "architectures": ["DeciLMForCausalLM"], "model_type": "nemotron-nas", "hidden_size": 32,
        "num_attention_heads": 4, "num_hidden_layers": 3, "vocab_size": 64, "max_position_embeddings": 256,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": [2], "torch_dtype": "float32", "block_configs": blocks,
    })
    gen = torch.Generator().manual_seed(0)
    tensors = {name: (1.0 if name.endswith("norm.weight") else 0.0) + 0.3 * torch.randn(shape, generator=gen)
               for name, shape in spec.hf_tensor_shapes().items()}
    return ReferenceModel.from_state_dict(spec, tensors)


def test_scheduler_with_real_reference_model():
    reference = pytest.importorskip("nemo_trt.reference")
    model = small_deci_model()
    prompt = [1, 10, 20, 30]
    alone = model.generate(prompt, 6, reference.SamplingParams())
    sinks = [ListSink() for _ in range(3)]
    reqs = [rb.BackendRequest(input_ids=prompt, max_new_tokens=6, streaming=True),
            rb.BackendRequest(input_ids=prompt[:2], max_new_tokens=6, streaming=True),
            rb.BackendRequest(input_ids=prompt, max_new_tokens=6, temperature=0.8, seed=3)]
    scheduler = rb.Scheduler(model, rb.sampling_factory)
    for r, s in zip(reqs, sinks):
        scheduler.submit(r, s)
    scheduler.start()
    for s in sinks:
        assert s.done.wait(60)
    scheduler.stop()
    assert not any(s.errors for s in sinks)
    # interleaving with other sessions does not change a greedy result
    assert sinks[0].tokens == alone and len(alone) == 6
    again = rb.Scheduler(model, rb.sampling_factory).start()
    sink, too_long = ListSink(), ListSink()
    again.submit(reqs[2], sink)
    again.submit(rb.BackendRequest(input_ids=prompt, max_new_tokens=1000), too_long)
    assert sink.done.wait(60) and too_long.done.wait(60)
    again.stop()
    assert sink.tokens == sinks[2].tokens  # same seed, same sampled tokens
    assert too_long.errors and "positions" in too_long.errors[0]  # the model's own check, as an error response
