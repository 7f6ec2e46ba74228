"""Causal multi-head self-attention through scaled_dot_product_attention (flash on GPU)."""

import torch
import torch.nn.functional as F
from torch import nn

from aria_train.model.rope import apply_rotary


class Attention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(hidden_size, inner, bias=False)
        self.k_proj = nn.Linear(hidden_size, inner, bias=False)
        self.v_proj = nn.Linear(hidden_size, inner, bias=False)
        self.o_proj = nn.Linear(inner, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: [B, S, H]; cos, sin: [B, S, head_dim] -> [B, S, H]"""
        batch, seq, _ = x.shape
        split_heads = lambda t: t.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        q = apply_rotary(split_heads(self.q_proj(x)), cos, sin)  # [B, heads, S, head_dim]
        k = apply_rotary(split_heads(self.k_proj(x)), cos, sin)
        v = split_heads(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))
