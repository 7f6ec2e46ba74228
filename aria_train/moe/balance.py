"""Balance losses for the router: group-level load balancing and the z-loss.

Group-level load balancing (ARIA balances groups of 8 experts): experts are split into G
contiguous groups; f_g is the share of routed assignments that land in group g, P_g the summed
router probability of the group. With the normalisation below, group size 1 is exactly
megatron-core's `switch_load_balancing_loss_func`, and the loss equals `coeff` when load is
perfectly even, for any group size.

    loss = coeff * G / (k * T^2) * sum_g (sum_t P[t, g]) * tokens[g]
"""

import torch


def group_load_balancing_loss(
    probs: torch.Tensor, tokens_per_expert: torch.Tensor, top_k: int, group_size: int, coeff: float
) -> torch.Tensor:
    """probs: [T, E] softmax over all experts; tokens_per_expert: [E] assignment counts."""
    num_tokens, num_experts = probs.shape
    num_groups = num_experts // group_size
    group_probs = probs.sum(dim=0).view(num_groups, group_size).sum(dim=1)  # [G]
    group_tokens = tokens_per_expert.to(probs.dtype).view(num_groups, group_size).sum(dim=1)  # [G]
    scale = num_groups * coeff / (top_k * num_tokens * num_tokens)
    return torch.sum(group_probs * group_tokens) * scale


def z_loss(logits: torch.Tensor, coeff: float) -> torch.Tensor:
    """logits: [T, E] -> coeff * mean_t logsumexp(logits_t)^2 (ST-MoE)."""
    return torch.logsumexp(logits, dim=-1).square().mean() * coeff
