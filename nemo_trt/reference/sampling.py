"""Sampling parameters and the token chooser (greedy, temperature, top-k, top-p)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nemo_trt.errors import NemoTrtError


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token.

    temperature <= 0 or top_k == 1 means greedy (argmax). top_k == 0 disables
    the top-k cut; top_p == 1.0 disables nucleus sampling. `seed` makes a
    session's draws reproducible (each session owns its torch.Generator).
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise NemoTrtError(f"temperature must be >= 0, got {self.temperature}",
                               "use 0 for greedy decoding or a positive value such as 0.6")
        if self.top_k < 0:
            raise NemoTrtError(f"top_k must be >= 0, got {self.top_k}", "use 0 to disable top-k")
        if not 0.0 < self.top_p <= 1.0:
            raise NemoTrtError(f"top_p must be in (0, 1], got {self.top_p}", "use 1.0 to disable nucleus sampling")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 or self.top_k == 1

    def generator(self) -> torch.Generator | None:
        if self.greedy:
            return None
        gen = torch.Generator()
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(int(self.seed))
        return gen


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature-scaled logits [vocab] with tokens outside top-k / top-p set to -inf."""
    logits = logits.float() / params.temperature
    if params.top_k > 0 and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        mass_before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = mass_before >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Next token id from the last position's logits [vocab]."""
    if params.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(filter_logits(logits, params), dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
