"""Triton adapter for the CPU reference backend (decoupled): see nemo_trt/serve/reference_backend.py.

execute() parses each request into a BackendRequest and hands it to the scheduler thread;
responses are sent from that thread through the request's response sender.
"""
from __future__ import annotations

import json
import logging

import numpy as np
import triton_python_backend_utils as pb_utils

from nemo_trt.serve import reference_backend as rb

INPUT_NAMES = (
    "input_ids", "input_lengths", "request_output_len", "end_id", "pad_id", "stop_words_list",
    "bad_words_list", "beam_width", "temperature", "runtime_top_k", "runtime_top_p", "seed",
    "exclude_input_in_output", "stop", "streaming", "repetition_penalty", "presence_penalty", "frequency_penalty",
    "min_tokens", "return_perf_metrics", "return_log_probs",
)
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class _TritonSink:
    """Sends Chunks as TRT-LLM-shaped output tensors (batch dim 1, beam dim 1)."""

    def __init__(self, sender):
        self.sender = sender

    def send(self, chunk: rb.Chunk) -> None:
        n = len(chunk.output_ids)
        tensors = [
            pb_utils.Tensor("output_ids", np.array(chunk.output_ids, dtype=np.int32).reshape(1, 1, n)),
            pb_utils.Tensor("sequence_length", np.array([[n]], dtype=np.int32)),
            pb_utils.Tensor("num_input_tokens", np.array([[chunk.num_input_tokens]], dtype=np.int32)),
            pb_utils.Tensor("num_output_tokens", np.array([[chunk.num_output_tokens]], dtype=np.int32)),
            pb_utils.Tensor("batch_index", np.zeros((1, 1), dtype=np.int32)),
            pb_utils.Tensor("sequence_index", np.zeros((1, 1), dtype=np.int32)),
        ]
        if chunk.log_probs is not None:  # like TensorRT-LLM: only with return_log_probs
            lp = np.array(chunk.log_probs, dtype=np.float32)
            tensors += [pb_utils.Tensor("cum_log_probs", np.array([[chunk.cum_log_prob]], dtype=np.float32)),
                        pb_utils.Tensor("output_log_probs", lp.reshape(1, 1, lp.size))]
        if chunk.perf is not None:  # like the TensorRT-LLM backend: every response of a request that asked
            p = chunk.perf
            tensors += [pb_utils.Tensor(name, np.array([[value]], dtype=dtype)) for name, value, dtype in (
                ("kv_cache_alloc_new_blocks", 0, np.int32), ("kv_cache_reused_blocks", 0, np.int32),
                ("kv_cache_alloc_total_blocks", 0, np.int32), ("arrival_time_ns", p.arrival_time_ns, np.int64),
                ("first_scheduled_time_ns", p.first_scheduled_time_ns, np.int64),
                ("first_token_time_ns", p.first_token_time_ns, np.int64),
                ("last_token_time_ns", p.last_token_time_ns, np.int64), ("acceptance_rate", 0.0, np.float32),
                ("total_accepted_draft_tokens", 0, np.int32), ("total_draft_tokens", 0, np.int32))]
        self.sender.send(pb_utils.InferenceResponse(output_tensors=tensors), flags=FINAL if chunk.final else 0)

    def send_error(self, message: str) -> None:
        self.sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)), flags=FINAL)

    def finish_cancelled(self) -> None:
        self.sender.send(flags=FINAL)

    def is_cancelled(self) -> bool:
        return self.sender.is_cancelled()


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("the reference backend needs model_transaction_policy decoupled: true")
        params = config.get("parameters", {})
        checkpoint = rb.parameter(params, "reference_checkpoint_dir", "")
        if not checkpoint:
            raise pb_utils.TritonModelException(
                "parameter reference_checkpoint_dir is not set: write the repository with `nemo-trt repo`"
            )
        threads = rb.parameter(params, "reference_num_threads", "")
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        self.default_exclude_input = rb.parse_bool(rb.parameter(params, "exclude_input_in_output", "true"))
        self.model = rb.load_reference_model(checkpoint)
        spec = getattr(self.model, "spec", None)
        self.vocab_size = getattr(spec, "vocab_size", None)
        self.max_input_len = getattr(spec, "max_position_embeddings", None)
        max_active = int(rb.parameter(params, "reference_max_active", str(rb.DEFAULT_MAX_ACTIVE)))
        self.scheduler = rb.Scheduler(self.model, rb.sampling_factory, max_active=max_active).start()
        self.logger = pb_utils.Logger
        self.logger.log_info(f"reference backend ready: {checkpoint}, up to {max_active} concurrent sessions")

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            sink = _TritonSink(sender)
            try:
                inputs = {}
                for name in INPUT_NAMES:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    if tensor is not None:
                        inputs[name] = tensor.as_numpy()
                if rb.is_stop_request(inputs):
                    self.scheduler.cancel(request.request_id())
                    sink.finish_cancelled()
                    continue
                parsed = rb.parse_request(
                    inputs, request.request_id(), vocab_size=self.vocab_size,
                    default_exclude_input=self.default_exclude_input, max_input_len=self.max_input_len,
                )
            except rb.BadRequest as exc:
                sink.send_error(f"bad request: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - never let one request break the instance
                logging.exception("reference backend: cannot parse request")
                sink.send_error(f"cannot parse request: {exc}")
                continue
            self.scheduler.submit(parsed, sink)
        return None

    def finalize(self):
        self.scheduler.stop()
