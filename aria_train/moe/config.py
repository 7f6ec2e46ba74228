"""Configuration of the MoE layer (`model.moe.*`; the ViT's `vision.moe.*` extends it in
aria_train.model.vision_config), and where the decoder puts its MoE layers."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal, Optional, Union

from aria_train.config import ConfigError, require_positive

# topk: each token picks its top_k experts (ARIA). expert_choice: each expert picks its top C
# tokens (Zhou et al. 2022, aria_train.moe.expert_choice); it looks at every token of the batch,
# so only a bidirectional encoder may use it.
RouterKind = Literal["topk", "expert_choice"]
ROUTERS: tuple[str, ...] = typing.get_args(RouterKind)


@dataclass
class MoEConfig:
    num_experts: int = 8  # E: routed experts per layer, over all ranks
    top_k: int = 2  # routed experts per token
    num_shared_experts: int = 2  # the shared MLP is num_shared_experts * expert_ffn_size wide (0 = none)
    expert_ffn_size: int = 32  # width of one routed expert's SwiGLU
    balance_group_size: int = 8  # load-balancing loss counts groups of this many experts
    aux_loss_coeff: float = 1e-2
    z_loss_coeff: float = 1e-3
    # topk: None = dropless, else each expert keeps ceil(c * T * top_k / E) assignments.
    # expert_choice: c of C = ceil(c * T / E) tokens per expert (None = top_k, the same compute).
    capacity_factor: Optional[float] = None
    router: RouterKind = "topk"
    # Decoder placement (Megatron's moe_layer_freq, DeepSeek's first_k_dense_replace): layer i is
    # MoE when i >= first_k_dense and i % layer_freq == 0 (an int), or layer_freq[i] == 1 (a
    # list of 0/1, one per layer); the other layers have a dense SwiGLU MLP of dense_ffn_size
    # (None = (top_k + num_shared_experts) * expert_ffn_size: the width a token runs in a MoE layer).
    layer_freq: Union[int, list[int]] = 1
    first_k_dense: int = 0
    dense_ffn_size: Optional[int] = None

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
        if self.num_shared_experts < 0:
            raise ConfigError(f"{prefix}.num_shared_experts={self.num_shared_experts} must be >= 0")
        return self

    @property
    def expert_choice_capacity_factor(self) -> float:
        """c of expert-choice routing: capacity_factor, or top_k when it is not set."""
        return float(self.capacity_factor) if self.capacity_factor is not None else float(self.top_k)

    @property
    def dense_width(self) -> int:
        """Width of the dense MLP of a decoder layer that is not MoE."""
        if self.dense_ffn_size is not None:
            return self.dense_ffn_size
        return (self.top_k + self.num_shared_experts) * self.expert_ffn_size

    def moe_layers(self, num_layers: int, prefix: str = "model.moe") -> list[int]:
        """The decoder layers that are MoE (ascending), from layer_freq and first_k_dense."""
        freq = self.layer_freq
        if isinstance(freq, list):
            if len(freq) != num_layers or any(v not in (0, 1) for v in freq):
                raise ConfigError(f"{prefix}.layer_freq={freq} must be one 0/1 per layer ({num_layers} layers)")
            pattern = [bool(v) for v in freq]
        else:
            if freq < 1:
                raise ConfigError(f"{prefix}.layer_freq={freq} must be >= 1 (every N-th layer) or a 0/1 list")
            pattern = [i % freq == 0 for i in range(num_layers)]
        if not 0 <= self.first_k_dense <= num_layers:
            raise ConfigError(f"{prefix}.first_k_dense={self.first_k_dense} is outside [0, {num_layers}]")
        if self.dense_ffn_size is not None and self.dense_ffn_size <= 0:
            raise ConfigError(f"{prefix}.dense_ffn_size={self.dense_ffn_size} must be positive or null")
        return [i for i, moe in enumerate(pattern) if moe and i >= self.first_k_dense]
