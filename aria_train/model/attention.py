"""Causal multi-head self-attention through scaled_dot_product_attention (flash on GPU).

Optional QK-norm (aria_train.model.qk_norm): each head's queries and keys are normalised over
the head dimension before RoPE.
"""

import torch
import torch.nn.functional as F
from torch import nn

from aria_train.model.qk_norm import apply_norm, make_qk_norm
from aria_train.model.rope import apply_rotary


class Attention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, qk_norm: str = "none", eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(hidden_size, inner, bias=False)
        self.k_proj = nn.Linear(hidden_size, inner, bias=False)
        self.v_proj = nn.Linear(hidden_size, inner, bias=False)
        self.o_proj = nn.Linear(inner, hidden_size, bias=False)
        self.q_norm = make_qk_norm(qk_norm, head_dim, eps)
        self.k_norm = make_qk_norm(qk_norm, head_dim, eps)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """[B, S, heads * head_dim] -> [B, heads, S, head_dim]"""
        batch, seq, _ = t.shape
        return t.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)

    def queries_keys(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, S, H] -> (q, k), each [B, heads, S, head_dim]: projected, QK-normed, rotated."""
        q = apply_rotary(apply_norm(self.q_norm, self._split_heads(self.q_proj(x))), cos, sin)
        k = apply_rotary(apply_norm(self.k_norm, self._split_heads(self.k_proj(x))), cos, sin)
        return q, k

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: [B, S, H]; cos, sin: [B, S, head_dim] -> [B, S, H]"""
        batch, seq, _ = x.shape
        q, k = self.queries_keys(x, cos, sin)
        v = self._split_heads(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))
