"""Optional expert capacity: which assignments are dropped when an expert is over-subscribed.

Policy: capacity = ceil(capacity_factor * T * k / E) assignments per expert per micro-batch on
each rank. Assignments are served in token order (earlier tokens first, and for one token its
higher-weighted choice first); those past capacity are dropped. A dropped assignment contributes
nothing; the token still passes through the residual stream and the shared experts.
"""

import math

import torch


def capacity_keep_mask(top_experts: torch.Tensor, num_experts: int, capacity_factor: float) -> torch.Tensor:
    """top_experts: [T, k] -> keep [T, k] bool."""
    num_tokens, top_k = top_experts.shape
    capacity = math.ceil(capacity_factor * num_tokens * top_k / num_experts)
    flat = top_experts.reshape(-1, 1)
    # one-hot by scatter: F.one_hot reads the ids' range back to the host (on CPU) to check it
    one_hot = torch.zeros(flat.shape[0], num_experts, dtype=torch.long, device=flat.device).scatter_(1, flat, 1)
    position_in_expert = (torch.cumsum(one_hot, dim=0) - 1) * one_hot  # arrival order per expert
    arrival = position_in_expert.sum(dim=-1).view(num_tokens, top_k)
    return arrival < capacity
