"""Triton Python model `preprocessing`: tensors <-> nemo_trt.serve.preprocess."""
import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

from nemo_trt.model_facts import load_serving_facts
from nemo_trt.serve.preprocess import UNSUPPORTED_INPUTS, PreprocessSettings, Preprocessor, RequestFields
from nemo_trt.serve.prompt import PromptError
from nemo_trt.serve.triton_params import model_parameters, required, resolve_path

_SCALARS = {  # request field <- input tensor
    "text_input": "QUERY", "messages": "MESSAGES", "reasoning": "REASONING", "max_tokens": "REQUEST_OUTPUT_LEN",
    "tools": "TOOLS", "continue_final": "CONTINUE_FINAL",
    "end_id": "END_ID", "pad_id": "PAD_ID", "temperature": "TEMPERATURE", "top_p": "TOP_P", "top_k": "TOP_K",
    "stream": "STREAM", "exclude_input_in_output": "EXCLUDE_INPUT_IN_OUTPUT", "beam_width": "BEAM_WIDTH",
    "num_return_sequences": "NUM_RETURN_SEQUENCES", "min_tokens": "MIN_TOKENS", "min_length": "MIN_LENGTH",
    "seed": "SEED", "random_seed": "RANDOM_SEED",
}
_UNSUPPORTED = {"return_context_logits": "RETURN_CONTEXT_LOGITS",
                "return_generation_logits": "RETURN_GENERATION_LOGITS"}


def _array(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    array = tensor.as_numpy()
    if array.shape and array.shape[0] != 1:
        raise PromptError(f"{name}: batch size {array.shape[0]} is not supported; send one prompt per request")
    return array.reshape(-1)


def _scalar(request, name):
    array = _array(request, name)
    if array is None or array.size == 0:
        return None
    value = array[0]
    return value if isinstance(value, bytes) else value.item()


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        tokenizer = Tokenizer.from_file(str(resolve_path(required(params, "tokenizer_dir"), args) / "tokenizer.json"))
        settings = PreprocessSettings(
            max_input_len=int(required(params, "max_input_len")),
            max_seq_len=int(required(params, "max_seq_len")),
            default_max_tokens=int(required(params, "default_max_tokens")),
            default_reasoning=required(params, "default_reasoning"),
        )
        self.preprocessor = Preprocessor(tokenizer, load_serving_facts(required(params, "serving_model")), settings)

    def _fields(self, request) -> RequestFields:
        fields = RequestFields(**{field: _scalar(request, name) for field, name in _SCALARS.items()})
        for field, name in (("stop_words", "STOP_WORDS_DICT"), ("bad_words", "BAD_WORDS_DICT")):
            array = _array(request, name)
            setattr(fields, field, [] if array is None else list(array))
        fields.unsupported_flags = {f: bool(_scalar(request, n)) for f, n in _UNSUPPORTED.items()}
        fields.unsupported_inputs = [name for name in UNSUPPORTED_INPUTS
                                     if pb_utils.get_input_tensor_by_name(request, name.upper()) is not None]
        return fields

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                p = self.preprocessor.prepare(self._fields(request))
                out = {
                    "INPUT_ID": np.array([p.input_ids], np.int32),
                    "REQUEST_INPUT_LEN": np.array([[p.input_len]], np.int32),
                    "REQUEST_OUTPUT_LEN": np.array([[p.output_len]], np.int32),
                    "STOP_WORDS_IDS": p.stop_words[np.newaxis],
                    "BAD_WORDS_IDS": p.bad_words[np.newaxis],
                    "OUT_END_ID": np.array([[p.end_id]], np.int32),
                    "OUT_PAD_ID": np.array([[p.pad_id]], np.int32),
                    "OUT_TEMPERATURE": np.array([[p.sampling.temperature]], np.float32),
                    "OUT_TOP_P": np.array([[p.sampling.top_p]], np.float32),
                    "OUT_TOP_K": np.array([[p.sampling.top_k]], np.int32),
                    "OUT_STREAM": np.array([[p.stream]], bool),
                    "OUT_EXCLUDE_INPUT_IN_OUTPUT": np.array([[True]], bool),
                    "OUT_MIN_TOKENS": np.array([[p.min_tokens]], np.int32),
                    # Always: `arrival_time_ns` identifies the stream for postprocessing.
                    "OUT_RETURN_PERF_METRICS": np.array([[True]], bool),
                }
                if p.seed is not None:  # else no OUT_SEED at all: tensorrt_llm keeps its own default
                    out["OUT_SEED"] = np.array([[p.seed]], np.uint64)
                tensors = [pb_utils.Tensor(name, value) for name, value in out.items()]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except PromptError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
            except Exception as exc:  # noqa: BLE001 - a bad request must not take the model down
                message = f"preprocessing failed: {type(exc).__name__}: {exc}"
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)))
        return responses
