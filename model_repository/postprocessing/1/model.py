"""Triton Python model `postprocessing` (stock TensorRT-LLM contract, not decoupled).

TOKENS_BATCH [batch, beams, tokens] + SEQUENCE_LENGTH [batch, beams] -> OUTPUT,
REASONING_OUTPUT, ANSWER_OUTPUT (batch·beams strings each) via
nemo_trt.serve.postprocess.decode_sequences. Stateless: it decodes whole sequences;
streaming goes through the stateful `generate` model.
"""
import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

from nemo_trt.serve.postprocess import SequenceError, decode_sequences
from nemo_trt.serve.triton_params import model_parameters, required, resolve_path


def _strings(values):
    return np.array([v.encode("utf-8") for v in values], dtype=object)


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        self.tokenizer = Tokenizer.from_file(
            str(resolve_path(required(params, "tokenizer_dir"), args) / "tokenizer.json"))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                decoded = decode_sequences(
                    self.tokenizer,
                    pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy(),
                    pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy())
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("OUTPUT", _strings(d.text for d in decoded)),
                    pb_utils.Tensor("REASONING_OUTPUT", _strings(d.reasoning for d in decoded)),
                    pb_utils.Tensor("ANSWER_OUTPUT", _strings(d.answer for d in decoded)),
                ]))
            except SequenceError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
            except Exception as exc:  # noqa: BLE001 - a bad request must not take the model down
                message = f"postprocessing failed: {type(exc).__name__}: {exc}"
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)))
        return responses
