"""Triton Python model `postprocessing`: tensorrt_llm token responses -> text deltas.

The ensemble's last step (stock layout: preprocessing -> tensorrt_llm -> postprocessing),
without the stock model's dynamic batcher (config.pbtxt says why). With
`ARRIVAL_TIME_NS` (the ensemble maps tensorrt_llm's `arrival_time_ns`, which every
request returns) each request is one token response of a stream, keyed by
(request id, arrival time) in a nemo_trt.serve.postprocess.StreamTable: incremental
detokenization + reasoning split, so the deltas concatenate to the exact text. Without it
(a client or BLS model calling this model directly with whole sequences, the stock
contract) every sequence is decoded on its own.

One instance only: the stream table lives in this process, and one instance takes a
stream's responses in the order tensorrt_llm sent them.
"""
import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

from nemo_trt.serve.postprocess import DEFAULT_STREAM_CAPACITY, SequenceError, StreamTable, decode_sequences
from nemo_trt.serve.triton_params import model_parameters, required, resolve_path


def _strings(values, rows=1):
    return np.array([v.encode("utf-8") for v in values], dtype=object).reshape(rows, -1)


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        self.tokenizer = Tokenizer.from_file(
            str(resolve_path(required(params, "tokenizer_dir"), args) / "tokenizer.json"))
        self.streams = StreamTable(self.tokenizer, int(params.get("stream_capacity") or DEFAULT_STREAM_CAPACITY))

    def _stream_response(self, request, tokens, lengths, arrival):
        """One token response of a stream -> its output tensors (every output, empty or not)."""
        if tokens.ndim == 2:
            tokens = tokens.reshape(1, 1, -1)
        if tokens.shape[0] != 1 or tokens.shape[1] != 1:
            raise SequenceError(f"a streamed response must hold one sequence (batch 1, beam 1), got TOKENS_BATCH "
                                f"shape {list(tokens.shape)}")
        ids = tokens[0, 0, :int(lengths.reshape(-1)[0])]
        delta = self.streams.feed((request.request_id(), int(arrival.reshape(-1)[0])), ids.tolist())
        return [
            pb_utils.Tensor("OUTPUT", _strings([delta.text])),
            pb_utils.Tensor("REASONING_OUTPUT", _strings([delta.reasoning])),
            pb_utils.Tensor("ANSWER_OUTPUT", _strings([delta.answer])),
            pb_utils.Tensor("OUTPUT_IDS", ids.astype(np.int32, copy=False).reshape(1, -1)),
            pb_utils.Tensor("NUM_OUTPUT_TOKENS", np.array([[delta.num_output_tokens]], dtype=np.int32)),
        ]

    def _whole_response(self, tokens, lengths):
        """Stock contract: batch·beams strings per output, [batch, beams]; ids and counts of beam 0."""
        decoded = decode_sequences(self.tokenizer, tokens, lengths)
        tokens = np.asarray(tokens)
        tokens = tokens[:, np.newaxis, :] if tokens.ndim == 2 else tokens
        lengths = np.asarray(lengths).reshape(tokens.shape[0], -1)
        rows = tokens.shape[0]
        return [
            pb_utils.Tensor("OUTPUT", _strings([d.text for d in decoded], rows)),
            pb_utils.Tensor("REASONING_OUTPUT", _strings([d.reasoning for d in decoded], rows)),
            pb_utils.Tensor("ANSWER_OUTPUT", _strings([d.answer for d in decoded], rows)),
            pb_utils.Tensor("OUTPUT_IDS", np.ascontiguousarray(tokens[:, 0, :], dtype=np.int32)),
            pb_utils.Tensor("NUM_OUTPUT_TOKENS", np.ascontiguousarray(lengths[:, :1], dtype=np.int32)),
        ]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                inputs = {tensor.name(): tensor for tensor in request.inputs()}
                tokens = inputs["TOKENS_BATCH"].as_numpy()
                lengths = inputs["SEQUENCE_LENGTH"].as_numpy()
                arrival = inputs.get("ARRIVAL_TIME_NS")
                outputs = (self._whole_response(tokens, lengths) if arrival is None
                           else self._stream_response(request, tokens, lengths, arrival.as_numpy()))
                responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            except SequenceError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
            except Exception as exc:  # noqa: BLE001 - a bad request must not take the model down
                message = f"postprocessing failed: {type(exc).__name__}: {exc}"
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)))
        return responses
