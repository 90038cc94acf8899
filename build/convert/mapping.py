"""Ranks of a TensorRT-LLM checkpoint: rank <-> (tp_rank, pp_rank) and each PP stage's layers.

Same rules as TensorRT-LLM's `Mapping` (`tensorrt_llm/mapping.py`, cp_size = 1):
`tp_rank = rank % tp_size`, `pp_rank = rank // tp_size` (TP groups are contiguous ranks), and
`pp_layers(n) = torch.tensor_split(arange(n), pp_size)[pp_rank]` (the first `n % pp` stages get
one extra layer). Pure functions; no torch needed.
"""
from __future__ import annotations

from dataclasses import dataclass

# Fields of `Mapping.to_dict()` (tensorrt_llm/mapping.py @05ebebb2) minus `rank`, which
# `PretrainedConfig.to_dict` drops (tensorrt_llm/models/modeling_utils.py).
GPUS_PER_NODE = 8


@dataclass(frozen=True)
class RankMapping:
    tp_size: int
    pp_size: int
    rank: int = 0

    def __post_init__(self) -> None:
        if self.tp_size < 1 or self.pp_size < 1:
            raise ValueError("tp_size and pp_size must be >= 1")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world of {self.world_size}")

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp_size

    @property
    def pp_rank(self) -> int:
        return self.rank // self.tp_size

    @property
    def is_first_pp_rank(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_pp_rank(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    def pp_layers(self, num_layers: int) -> range:
        return pp_layer_range(num_layers, self.pp_size, self.pp_rank)

    def with_rank(self, rank: int) -> RankMapping:
        return RankMapping(self.tp_size, self.pp_size, rank)

    def ranks(self) -> list[RankMapping]:
        return [self.with_rank(r) for r in range(self.world_size)]

    def to_config(self) -> dict:
        """The `mapping` block of the checkpoint config.json."""
        return {
            "world_size": self.world_size,
            "gpus_per_node": GPUS_PER_NODE,
            "cp_size": 1,
            "tp_size": self.tp_size,
            "pp_size": self.pp_size,
            "moe_tp_size": self.tp_size,
            "moe_cluster_size": 1,
            "moe_ep_size": 1,
            "attn_tp_size": self.tp_size,
            "attn_cp_size": 1,
            "auto_parallel": False,
        }


def rank_of(tp_rank: int, pp_rank: int, tp_size: int) -> int:
    return pp_rank * tp_size + tp_rank


def pp_layer_range(num_layers: int, pp_size: int, pp_rank: int) -> range:
    """torch.tensor_split rule: sizes differ by at most one, larger stages first."""
    if pp_size > num_layers:
        raise ValueError(f"pp_size {pp_size} > num_layers {num_layers}")
    base, extra = divmod(num_layers, pp_size)
    start = pp_rank * base + min(pp_rank, extra)
    size = base + (1 if pp_rank < extra else 0)
    return range(start, start + size)
