"""Configuration of the text decoder (`model.*`)."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

from aria_train.config import ConfigError, require_positive
from aria_train.model.qk_norm import QKNorm
from aria_train.moe.config import MoEConfig

# none | full (recompute each decoder block) | selective (recompute the attention-input norm and
# the MoE sub-block, keep the attention activations); see aria_train.model.decoder
ActivationCheckpointing = Literal["none", "full", "selective"]
CHECKPOINT_MODES: tuple[str, ...] = typing.get_args(ActivationCheckpointing)


@dataclass
class ModelConfig:
    preset: str = "tiny"
    vocab_size: int = 512
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    head_dim: int = 16
    rms_norm_eps: float = 1e-6
    rope_base: float = 100_000.0
    init_std: float = 0.02
    activation_checkpointing: ActivationCheckpointing = "none"
    qk_norm: QKNorm = "none"  # none | layernorm | rmsnorm on each head's q and k before RoPE (qk_norm.py)
    moe: MoEConfig = field(default_factory=MoEConfig)

    def validate(self) -> "ModelConfig":
        require_positive(self, "model", "vocab_size", "hidden_size", "num_layers", "num_heads", "head_dim")
        if self.hidden_size % self.num_heads != 0:
            raise ConfigError(f"model.num_heads={self.num_heads} does not divide model.hidden_size={self.hidden_size}")
        if self.head_dim % 2 != 0:
            raise ConfigError(f"model.head_dim={self.head_dim} must be even for rotary embeddings")
        self.moe.validate("model.moe")
        if self.moe.router == "expert_choice":
            raise ConfigError("model.moe.router=expert_choice is refused in the causal decoder: each expert picks its "
                              "top tokens over the whole sequence, so a token's output would depend on later tokens")
        self.moe.moe_layers(self.num_layers)  # checks the placement
        return self

    @property
    def moe_layers(self) -> list[int]:
        """The decoder layers that are MoE (model.moe.layer_freq, first_k_dense)."""
        return self.moe.moe_layers(self.num_layers)
