"""The prompt length for `usage`, counted in the gateway by preprocessing's own code.

The stock ensemble's stream carries no prompt length (a Triton ensemble may not mix tensors
from before the decoupled `tensorrt_llm` step with those after it). Asking the
`preprocessing` model for it runs the chat template and the tokenizer a second time inside
Triton, beside the generation: Triton CPU taken from the models on a busy server, and a
gRPC round trip of the gateway's own, on every request (bench/results/openai_gateway.md).
With the served tokenizer at hand (`--repo`, `--tokenizer-dir`) the gateway runs the same
`Preprocessor` on the same fields instead.

Trust is earned once: the first count is compared with what preprocessing answers for the
same request; a mismatch (a tokenizer other than the served one) turns local counting off
for good, and the gateway asks preprocessing as before.
"""
from __future__ import annotations

import logging

from tokenizers import Tokenizer

from nemo_trt.model_facts import ServingFacts
from nemo_trt.serve.openai.upstream import Deployment, UpstreamRequest
from nemo_trt.serve.preprocess import PreprocessSettings, Preprocessor, RequestFields
from nemo_trt.serve.prompt import PromptError
from nemo_trt.serve.toolcall import ToolSpecError

log = logging.getLogger("nemo_trt.openai")


class PromptCounter:
    """Prompt lengths as preprocessing renders them; `trusted` once one matched Triton's."""

    def __init__(self, tokenizer: Tokenizer, facts: ServingFacts, settings: PreprocessSettings):
        self._preprocessor = Preprocessor(tokenizer, facts, settings)
        self.trusted = False
        self.enabled = True

    @classmethod
    def for_deployment(cls, tokenizer: Tokenizer | None, facts: ServingFacts,
                       deployment: Deployment) -> PromptCounter | None:
        """None where counting here is not needed (the ensemble streams `num_input_tokens`)
        or not possible (no tokenizer, or preprocessing's limits unknown)."""
        d = deployment
        if tokenizer is None or "num_input_tokens" in d.outputs or d.max_input_len is None or \
                d.max_seq_len is None or d.default_max_tokens is None:
            return None
        mode = d.default_reasoning if d.default_reasoning in ("on", "off") else facts.reasoning.default
        settings = PreprocessSettings(max_input_len=d.max_input_len, max_seq_len=d.max_seq_len,
                                      default_max_tokens=d.default_max_tokens, default_reasoning=mode)  # type: ignore[arg-type]
        return cls(tokenizer, facts, settings)

    def count(self, request: UpstreamRequest) -> int | None:
        """The prompt length preprocessing gets for `request`; None when it cannot render it
        (Triton's answer then carries the error) or counting is off."""
        if not self.enabled:
            return None
        fields = RequestFields(messages=request.messages, reasoning=request.reasoning, tools=request.tools,
                               continue_final=request.continue_final, max_tokens=request.max_tokens)
        try:
            # the prompt only: a request preprocessing refuses on other grounds fails in Triton
            return len(self._preprocessor.render(fields).ids)
        except (PromptError, ToolSpecError, ValueError, TypeError):
            return None

    def check(self, local: int, served: int | None) -> None:
        """Compare one local count with preprocessing's answer for the same request."""
        if served is None or self.trusted or not self.enabled:
            return
        if local == served:
            self.trusted = True
        else:
            self.enabled = False
            log.warning("the gateway's tokenizer counts %d prompt tokens where Triton's preprocessing counts %d: "
                        "it is not the served tokenizer; asking preprocessing for every prompt length", local,
                        served)
