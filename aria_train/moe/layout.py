"""Which routed experts a rank holds: the one answer every part reads.

Expert parallelism splits the E global experts of every MoE layer over the ep_size ranks of an
EP group in contiguous blocks: rank `ep_rank` holds the e = E / ep_size experts
[first, first + e). `apply_expert_parallel` (aria_train.parallel) builds the layout and gives it
to each GroupedExperts; initialisation (one seed per global expert), the optimizer (global shape
and offset of each expert tensor), checkpoints (one key per global expert) and the memory
accounting read it from there. The divisibility of E by ep_size is checked here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from aria_train.config.errors import ConfigError


@dataclass(frozen=True)
class ExpertLayout:
    num_experts: int  # E: routed experts per layer, over all ranks
    ep_size: int = 1
    ep_rank: int = 0  # this rank's position in its EP group

    def __post_init__(self):
        if self.ep_size < 1:
            raise ConfigError(f"parallel.ep_size={self.ep_size} must be >= 1")
        if self.num_experts % self.ep_size != 0:
            raise ConfigError(
                f"parallel.ep_size={self.ep_size} does not divide model.moe.num_experts={self.num_experts}"
            )
        if not 0 <= self.ep_rank < self.ep_size:
            raise ValueError(f"EP rank {self.ep_rank} is outside an EP group of {self.ep_size}")

    @property
    def num_local_experts(self) -> int:
        """e: experts this rank holds."""
        return self.num_experts // self.ep_size

    @property
    def first(self) -> int:
        """Global index of this rank's first expert."""
        return self.ep_rank * self.num_local_experts

    @property
    def end(self) -> int:
        """One past the global index of this rank's last expert."""
        return self.first + self.num_local_experts

    def global_index(self, local: int) -> int:
        """The global index of local expert `local` (0 <= local < e)."""
        if not 0 <= local < self.num_local_experts:
            raise IndexError(f"local expert {local} of {self.num_local_experts}")
        return self.first + local
