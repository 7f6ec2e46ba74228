"""QK-norm: a normalisation of every attention head's queries and keys before RoPE and the dot
product (`model.qk_norm`, `vision.qk_norm`: none | layernorm | rmsnorm).

ViT-22B (Dehghani et al. 2023) and IMP (arXiv 2305.06324) apply LayerNorm to queries and keys:
the attention logits stay bounded, which removes the early divergence of large / contrastive MoE
training. Each norm acts on the head dimension with one learned scale (and, for layernorm, bias)
shared by all heads, as Qwen3's and OLMo-2's q_norm / k_norm do; q and k have their own norm.
"none" adds no parameters, so a model without QK-norm has exactly its old parameters and values.
"""

from __future__ import annotations

import typing
from typing import Literal, Optional

import torch
from torch import nn

from aria_train.model.norm import RMSNorm

QKNorm = Literal["none", "layernorm", "rmsnorm"]
QK_NORMS: tuple[str, ...] = typing.get_args(QKNorm)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in fp32 (as RMSNorm is), output in the input dtype: under bf16 autocast
    the per-head statistics of q and k stay exact."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)  # fp32 at least (float64 stays float64)
        weight = None if self.weight is None else self.weight.to(dtype)
        bias = None if self.bias is None else self.bias.to(dtype)
        return nn.functional.layer_norm(x.to(dtype), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


def make_qk_norm(kind: str, head_dim: int, eps: float) -> Optional[nn.Module]:
    """The norm of one of q / k over [..., head_dim]; None for "none"."""
    if kind == "none":
        return None
    if kind == "layernorm":
        return LayerNorm32(head_dim, eps=eps)
    if kind == "rmsnorm":
        return RMSNorm(head_dim, eps)
    raise ValueError(f"qk_norm={kind!r} is not one of {', '.join(QK_NORMS)}")


def apply_norm(norm: Optional[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """x [..., head_dim] through `norm` (unchanged when None)."""
    return x if norm is None else norm(x)
