"""Gradient clipping as torch.nn.utils.clip_grad_norm_ does it, from a norm both optimizers
compute their own way (over their shards, every parameter counted once)."""

from typing import Optional

import torch


def clip_coefficient(total_norm: torch.Tensor, max_norm: float) -> Optional[torch.Tensor]:
    """clip_grad_norm_'s coefficient (clamped to 1), or None when clipping is off (max_norm <= 0)."""
    if max_norm is None or max_norm <= 0:
        return None
    return torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
