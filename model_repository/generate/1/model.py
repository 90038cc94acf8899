"""Triton Python model `generate` (decoupled, BLS): tensorrt_llm tokens -> text deltas.

Each request runs on a thread of its own (a reused one: nemo_trt.serve.workers): it
forwards its tensors to `tensorrt_llm` (`exec(decoupled=True)`), turns every token response into a text delta with one
nemo_trt.serve.postprocess.TextStream, and ends with a response carrying the held-back
tail and the final flag (the BLS iterator only says "done" after the last data
response, so the tail cannot ride on it).
"""
import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

from nemo_trt.serve.cancel_check import CancelCheck
from nemo_trt.serve.postprocess import TextDelta, TextStream
from nemo_trt.serve.triton_params import model_parameters, required, resolve_path
from nemo_trt.serve.workers import Workers

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
FORWARDED = (
    "input_ids", "input_lengths", "request_output_len", "end_id", "pad_id", "stop_words_list", "bad_words_list",
    "temperature", "runtime_top_k", "runtime_top_p", "streaming", "exclude_input_in_output", "seed",
    "len_penalty", "repetition_penalty", "presence_penalty", "frequency_penalty", "min_tokens",
)


def _text(value: str):
    return np.array([[value.encode("utf-8")]], dtype=object)


def _response(delta: TextDelta, num_input_tokens: int):
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor("text_output", _text(delta.text)),
        pb_utils.Tensor("reasoning_output", _text(delta.reasoning)),
        pb_utils.Tensor("answer_output", _text(delta.answer)),
        pb_utils.Tensor("output_ids", np.array(delta.token_ids, np.int32).reshape(1, -1)),
        pb_utils.Tensor("num_output_tokens", np.array([[delta.num_output_tokens]], np.int32)),
        pb_utils.Tensor("num_input_tokens", np.array([[num_input_tokens]], np.int32)),
    ])


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        self.tokenizer = Tokenizer.from_file(
            str(resolve_path(required(params, "tokenizer_dir"), args) / "tokenizer.json"))
        self.llm = required(params, "tensorrt_llm_model_name")
        self.workers = Workers("generate")

    def execute(self, requests):
        for request in requests:
            self.workers.submit(self._run, request)
        return None

    def _run(self, request):
        sender = request.get_response_sender()
        try:
            # The request's own tensors, as they are (no numpy copy, no new shared-memory
            # buffer), as in the python backend's BLS examples; only those that are set.
            inputs = []
            for name in FORWARDED:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    inputs.append(tensor)
            num_input = int(pb_utils.get_input_tensor_by_name(request, "input_lengths").as_numpy().reshape(-1)[0])
            streaming = pb_utils.get_input_tensor_by_name(request, "streaming")
            streaming = bool(streaming.as_numpy().reshape(-1)[0]) if streaming is not None else False
            llm_request = pb_utils.InferenceRequest(
                model_name=self.llm, inputs=inputs, requested_output_names=["output_ids", "sequence_length"],
                request_id=request.request_id())
            stream = TextStream(self.tokenizer)
            tokens: list[int] = []
            cancelled = CancelCheck(sender.is_cancelled)  # not a server round trip per token
            responses = llm_request.exec(decoupled=True)
            for response in responses:
                if cancelled():
                    if hasattr(responses, "cancel"):
                        responses.cancel()
                    sender.send(flags=FINAL)
                    return
                if response.has_error():
                    sender.send(pb_utils.InferenceResponse(error=response.error()), flags=FINAL)
                    return
                ids = pb_utils.get_output_tensor_by_name(response, "output_ids")
                if ids is None:
                    continue  # the empty final response of the BLS stream
                length = int(pb_utils.get_output_tensor_by_name(response, "sequence_length").as_numpy().reshape(-1)[0])
                new = ids.as_numpy().reshape(-1)[:length].tolist()  # beam width 1
                if streaming:
                    if new:
                        sender.send(_response(stream.feed(new), num_input))
                else:
                    tokens.extend(new)
            last = stream.finish() if streaming else stream.feed_all(tokens)
            sender.send(_response(last, num_input), flags=FINAL)
        except Exception as exc:  # noqa: BLE001 - report to the client, keep serving
            message = f"generate failed: {type(exc).__name__}: {exc}"
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)), flags=FINAL)
