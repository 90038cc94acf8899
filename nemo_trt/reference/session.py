"""Token-by-token generation with a KV cache: one Session per request."""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

from nemo_trt.errors import NemoTrtError
from nemo_trt.reference.sampling import SamplingParams, choose_token

if TYPE_CHECKING:  # pragma: no cover
    from nemo_trt.reference.model import ReferenceModel


class Session:
    """One generation: the first `step()` runs the prompt (prefill), each later one a single token.

    `output_ids` are the generated ids so far. When a stop id is produced it is
    included as the last element (like HF `generate`), `finished` becomes True
    and `finish_reason` is "stop"; reaching `max_new_tokens` ends with "length".

    Decoding is many small ops: on a busy CPU, `torch.set_num_threads(1)` is
    usually several times faster than the default thread count.
    """

    def __init__(self, model: ReferenceModel, prompt_ids: list[int], sampling: SamplingParams,
                 stop_ids: Iterable[int], max_new_tokens: int):
        if not prompt_ids:
            raise NemoTrtError("the prompt is empty", "pass at least one token id")
        if max_new_tokens < 0:
            raise NemoTrtError(f"max_new_tokens must be >= 0, got {max_new_tokens}", "pass a non-negative count")
        limit = model.spec.max_position_embeddings
        if len(prompt_ids) + max_new_tokens > limit:
            raise NemoTrtError(
                f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                f"{limit} positions", "shorten the prompt or lower max_new_tokens")
        self.model = model
        self.prompt_ids = list(prompt_ids)
        self.sampling = sampling
        self.stop_ids = frozenset(int(t) for t in stop_ids)
        self.max_new_tokens = max_new_tokens
        self.output_ids: list[int] = []
        # Set to True to get `logprobs`: log-probability of each generated id under the model's
        # distribution (log-softmax of its logits, before temperature / top-k / top-p).
        self.want_logprobs = False
        self.logprobs: list[float] = []
        self.finish_reason: str | None = "length" if max_new_tokens == 0 else None
        self.cache = model.new_cache()
        self._generator = sampling.generator()

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @torch.inference_mode()
    def step(self) -> int | None:
        """The next token id, or None once the session has finished."""
        if self.finished:
            return None
        feed = self.output_ids[-1:] if self.output_ids else self.prompt_ids
        logits = self.model(torch.tensor([feed], dtype=torch.long), cache=self.cache, last_only=True)[0, -1]
        token = choose_token(logits, self.sampling, self._generator)
        if self.want_logprobs:
            self.logprobs.append(float(torch.log_softmax(logits.float(), dim=-1)[token]))
        self.output_ids.append(token)
        if token in self.stop_ids:
            self.finish_reason = "stop"
        elif len(self.output_ids) >= self.max_new_tokens:
            self.finish_reason = "length"
        return token
