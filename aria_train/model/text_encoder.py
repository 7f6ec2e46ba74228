"""Stage 0's text tower: a small bidirectional transformer over our tokenizer's ids.

Texts of a batch are packed without padding into one [T] id tensor (like the ViT's images) and
attend only within themselves (aria_train.model.vision.packed_attention, no causal mask). Each
layer is pre-norm: LayerNorm -> multi-head attention (with biases) -> residual, LayerNorm ->
GELU-tanh MLP -> residual; a final LayerNorm; learned absolute positions up to `max_length`.
It is its own tower (not the decoder's embedding): stage 0 needs no decoder, and stage 2 takes
only the ViT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from aria_train.config import ConfigError, require_positive
from aria_train.model.vision import Segments, packed_attention, seeded_normal_


@dataclass
class TextEncoderConfig:
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    max_length: int = 32  # longer texts are cut to their first max_length tokens
    layer_norm_eps: float = 1e-6
    init_std: Optional[float] = None  # None = 1/sqrt(fan_in) per weight

    def validate(self, prefix: str = "encoder.text") -> "TextEncoderConfig":
        require_positive(self, prefix, "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_length")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"{prefix}.num_heads={self.num_heads} does not divide "
                              f"{prefix}.hidden_size={self.hidden_size}")
        return self


class TextEncoderLayer(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x_TD: torch.Tensor, segments: Segments) -> torch.Tensor:
        """x_TD [T, D] packed texts -> [T, D]; attention stays inside each text."""
        q, k, v = self.qkv(self.norm1(x_TD)).view(x_TD.shape[0], 3, self.num_heads, self.head_dim).unbind(1)
        attended = packed_attention(q, k, v, segments, segments).reshape(x_TD.shape)
        x_TD = x_TD + self.out(attended)
        return x_TD + self.fc2(F.gelu(self.fc1(self.norm2(x_TD)), approximate="tanh"))


class TextEncoder(nn.Module):
    """forward(tokens_T [T] int64 packed, lengths [n] with sum = T) -> [T, D]."""

    def __init__(self, cfg: TextEncoderConfig, vocab_size: int):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_length, cfg.hidden_size)
        self.layers = nn.ModuleList(TextEncoderLayer(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, tokens_T: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        segments = Segments(list(lengths))
        if segments.total != tokens_T.shape[0]:
            raise ValueError(f"text lengths cover {segments.total} tokens but {tokens_T.shape[0]} were given")
        if segments.max_len > self.cfg.max_length:
            raise ValueError(f"a text of {segments.max_len} tokens exceeds encoder.text.max_length={self.cfg.max_length}")
        positions_T = torch.cat([torch.arange(n, device=tokens_T.device) for n in segments.lengths])
        x_TD = self.token_embedding(tokens_T) + self.position_embedding(positions_T)
        for layer in self.layers:
            x_TD = layer(x_TD, segments)
        return self.final_norm(x_TD)

    @torch.no_grad()
    def init_weights(self, seed: int = 0, prefix: str = "text_tower.") -> None:
        init_linear_stack_(self, self.cfg.init_std, seed, prefix)


def init_linear_stack_(module: nn.Module, std: Optional[float], seed: int, prefix: str) -> None:
    """LayerNorms 1/0, biases 0, other weights Normal(0, std or 1/sqrt(fan_in)), each tensor from
    its own seeded generator (as the ViT's init)."""
    norms = {name for name, m in module.named_modules() if isinstance(m, nn.LayerNorm)}
    for name, param in module.named_parameters():
        owner, _, leaf = name.rpartition(".")
        if owner in norms:
            param.fill_(1.0 if leaf == "weight" else 0.0)
        elif leaf == "bias":
            param.zero_()
        else:
            scale = std if std is not None else param[0].numel() ** -0.5
            seeded_normal_(param, scale, seed, prefix + name)
