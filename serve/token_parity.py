"""Do `ensemble_tokens` + client-side text and `ensemble` give the same answer on this server?

The token path trusts what `tensorrt_llm` returns per response (`output_ids` [batch, beams,
tokens] and `sequence_length`, streamed and not), which only the C++ backend on a GPU can
confirm: `nemo-trt selftest --gpu` runs this on the engines it built; CPU tests run it on the
scripted stand-in and the reference backend. Greedy (reasoning off), one request at a time, so
both models see the same generation.
"""
from __future__ import annotations

import queue
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nemo_trt.serve.token_ensemble import TOKEN_ENSEMBLE, TOKEN_OUTPUTS

PROMPTS = ("What is the capital of France?", "Write one sentence about the sea, in French and in Japanese.",
           "Count from 1 to 5.")


@dataclass
class ParityCase:
    prompt: str
    stream: bool
    text: str  # `ensemble` text_output, concatenated
    token_text: str  # ensemble_tokens ids -> TextStream, concatenated (final flush included)
    ids_equal: bool
    text_equal: bool


@dataclass
class TokenParity:
    cases: list[ParityCase] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        # The step leaves out a character cut by the length limit that the client flushes: the
        # token path's text must start with the text path's and match it everywhere else.
        return bool(self.cases) and all(c.text_equal for c in self.cases)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "cases": [asdict(c) for c in self.cases]}


def _inputs(prompt: str, stream: bool, max_tokens: int) -> list:
    import tritonclient.grpc as grpcclient

    values = [("text_input", np.array([[prompt.encode()]], dtype=object), "BYTES"),
              ("reasoning", np.array([[b"off"]], dtype=object), "BYTES"),
              ("max_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32"),
              ("stream", np.array([[stream]], dtype=bool), "BOOL")]
    tensors = []
    for name, value, dtype in values:
        tensor = grpcclient.InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    return tensors


def _call(url: str, model: str, inputs: list, outputs: tuple[str, ...], timeout: float) -> list[dict[str, Any]]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    got: list[dict[str, Any]] = []
    try:
        client.async_stream_infer(model, inputs, enable_empty_final_response=True,
                                  outputs=[grpcclient.InferRequestedOutput(n) for n in outputs])
        while True:
            result, error = responses.get(timeout=timeout)
            if error is not None:
                raise RuntimeError(f"{model}: {error}")
            response = result.get_response()
            outputs_now = {o.name: result.as_numpy(o.name) for o in response.outputs}
            final = response.parameters.get("triton_final_response")
            outputs_now["_final"] = final is None or final.bool_param
            got.append(outputs_now)
            if outputs_now["_final"]:
                return got
    finally:
        client.stop_stream()
        client.close()


def token_parity(url: str, tokenizer_dir: Path, prompts: tuple[str, ...] = PROMPTS, max_tokens: int = 48,
                 timeout: float = 120.0) -> TokenParity:
    from tokenizers import Tokenizer

    from nemo_trt.serve.postprocess import TextStream

    tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    report = TokenParity()
    for prompt in prompts:
        for stream in (True, False):
            inputs = _inputs(prompt, stream, max_tokens)
            text_responses = _call(url, "ensemble", inputs, ("text_output", "output_ids"), timeout)
            token_responses = _call(url, TOKEN_ENSEMBLE, inputs, TOKEN_OUTPUTS, timeout)
            text = "".join(r["text_output"].reshape(-1)[0].decode() for r in text_responses if "text_output" in r)
            text_ids = [int(t) for r in text_responses if "output_ids" in r for t in r["output_ids"].reshape(-1)]
            made, ids = TextStream(tokenizer), []
            parts = []
            for r in token_responses:
                if "output_ids" in r:
                    chunk = r["output_ids"][0, 0, :int(r["sequence_length"].reshape(-1)[0])].tolist()
                    ids += chunk
                    parts.append(made.feed(chunk).text)
            parts.append(made.finish().text)
            token_text = "".join(parts)
            report.cases.append(ParityCase(prompt, stream, text, token_text, ids == text_ids,
                                           token_text == text or (token_text.startswith(text) and
                                                                  ids == text_ids and "\ufffd" in token_text)))
    return report
