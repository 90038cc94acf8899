"""Triton Python model `postprocessing`: tensors <-> nemo_trt.serve.postprocess."""
import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

from nemo_trt.serve.postprocess import Postprocessor
from nemo_trt.serve.triton_params import model_parameters, required, resolve_path


def _scalar(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    array = tensor.as_numpy().reshape(-1)
    return array[0].item() if array.size else None


def _text(value: str):
    return np.array([[value.encode("utf-8")]], dtype=object)


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        tokenizer = Tokenizer.from_file(str(resolve_path(required(params, "tokenizer_dir"), args) / "tokenizer.json"))
        stop_ids = [int(i) for i in required(params, "stop_ids").split(",") if i.strip()]
        self.postprocessor = Postprocessor(
            tokenizer, stop_ids,
            max_states=int(required(params, "state_max_requests")),
            ttl_s=float(required(params, "state_ttl_seconds")),
        )

    def execute(self, requests):
        # One instance, requests in arrival order: a stream's responses are seen in order.
        responses = []
        for request in requests:
            try:
                tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
                lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()
                if tokens.shape[0] != 1:
                    raise ValueError(f"batch size {tokens.shape[0]} is not supported")
                # [batch, beam, tokens]; beam width is 1
                ids = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])[0, 0, : int(lengths.reshape(-1)[0])]
                key = _scalar(request, "REQUEST_KEY")
                stream = _scalar(request, "STREAM")
                out = self.postprocessor.process(
                    key, ids.tolist(), stream=bool(stream) if stream is not None else False,
                    max_output_len=_scalar(request, "MAX_OUTPUT_LEN"), end_id=_scalar(request, "END_ID"),
                )
                input_len = _scalar(request, "INPUT_LENGTH")
                tensors = [
                    pb_utils.Tensor("OUTPUT", _text(out.text)),
                    pb_utils.Tensor("REASONING_OUTPUT", _text(out.reasoning)),
                    pb_utils.Tensor("ANSWER_OUTPUT", _text(out.answer)),
                    pb_utils.Tensor("OUTPUT_IDS", np.array([out.token_ids], np.int32).reshape(1, -1)),
                    pb_utils.Tensor("NUM_OUTPUT_TOKENS", np.array([[out.num_output_tokens]], np.int32)),
                    pb_utils.Tensor("NUM_INPUT_TOKENS", np.array([[input_len or 0]], np.int32)),
                ]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # noqa: BLE001
                message = f"postprocessing failed: {type(exc).__name__}: {exc}"
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)))
        return responses
