"""Configuration of the MoE layer (`model.moe.*`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from aria_train.config import ConfigError, require_positive


@dataclass
class MoEConfig:
    num_experts: int = 8  # E: routed experts per layer, over all ranks
    top_k: int = 2  # routed experts per token
    num_shared_experts: int = 2  # the shared MLP is num_shared_experts * expert_ffn_size wide
    expert_ffn_size: int = 32  # width of one routed expert's SwiGLU
    balance_group_size: int = 8  # load-balancing loss counts groups of this many experts
    aux_loss_coeff: float = 1e-2
    z_loss_coeff: float = 1e-3
    capacity_factor: Optional[float] = None  # None = dropless

    def validate(self, prefix: str = "model.moe") -> "MoEConfig":
        require_positive(self, prefix, "num_experts", "top_k", "expert_ffn_size", "balance_group_size")
        if self.top_k > self.num_experts:
            raise ConfigError(f"{prefix}.top_k={self.top_k} exceeds {prefix}.num_experts={self.num_experts}")
        if self.num_experts % self.balance_group_size != 0:
            raise ConfigError(
                f"{prefix}.balance_group_size={self.balance_group_size} does not divide "
                f"{prefix}.num_experts={self.num_experts}"
            )
        if self.capacity_factor is not None and self.capacity_factor <= 0:
            raise ConfigError(f"{prefix}.capacity_factor={self.capacity_factor} must be positive or null")
        return self
