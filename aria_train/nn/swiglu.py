"""The SwiGLU MLP: ARIA's shared experts (width = shared count x expert width), and the shape of
each routed expert (which aria_train.moe.experts runs as grouped GEMMs)."""

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, ffn_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, ffn_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, ffn_size, bias=False)
        self.down_proj = nn.Linear(ffn_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., H] -> [..., H]"""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
