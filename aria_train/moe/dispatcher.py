"""Moves routed assignments to their experts and back, on one rank.

A token routed to k experts makes k assignments. `dispatch` sorts the kept assignments by
expert so the experts see contiguous rows; `combine` puts each expert output back into its
(token, slot) place and sums the k slots weighted by the router. Every write goes through
unique indices, so the result is deterministic on every device.

The expert-parallel dispatcher (aria_train.moe.alltoall) has the same two methods.
"""

from dataclasses import dataclass
from typing import Optional

import torch


def slots_by_expert(flat_experts: torch.Tensor, keep: Optional[torch.Tensor]) -> torch.Tensor:
    """flat_experts: [T*k] expert of each (token, slot); keep: [T, k] bool or None ->
    the kept flat slots, sorted by expert (stable: token order within an expert)."""
    slots = torch.arange(flat_experts.numel(), device=flat_experts.device)
    if keep is not None:
        slots = slots[keep.reshape(-1)]
    return slots[torch.argsort(flat_experts[slots], stable=True)]


@dataclass
class LocalDispatchHandle:
    kept_slots: torch.Tensor  # [N] flat (token * k + slot) index of each row, in expert order
    num_slots: int  # T * k


class LocalDispatcher:
    def __init__(self, num_experts: int):
        self.num_experts = num_experts

    def dispatch(
        self, x: torch.Tensor, top_experts: torch.Tensor, keep: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor, LocalDispatchHandle]:
        """x: [T, H]; top_experts: [T, k]; keep: [T, k] bool (None = dropless).

        Returns expert_input [N, H] sorted by expert, counts [E], and the handle for `combine`.
        """
        top_k = top_experts.shape[1]
        flat_experts = top_experts.reshape(-1)
        kept_slots = slots_by_expert(flat_experts, keep)
        counts = torch.bincount(flat_experts[kept_slots], minlength=self.num_experts)
        expert_input = x.index_select(0, torch.div(kept_slots, top_k, rounding_mode="floor"))
        return expert_input, counts, LocalDispatchHandle(kept_slots, flat_experts.numel())

    def combine(
        self, expert_output: torch.Tensor, top_weights: torch.Tensor, handle: LocalDispatchHandle
    ) -> torch.Tensor:
        """expert_output: [N, H] in dispatch order; top_weights: [T, k] -> [T, H]"""
        num_tokens, top_k = top_weights.shape
        slots = expert_output.new_zeros(handle.num_slots, expert_output.shape[-1])
        slots = slots.index_copy(0, handle.kept_slots, expert_output)  # dropped slots stay zero
        slots = slots.view(num_tokens, top_k, expert_output.shape[-1])  # explicit: T may be 0
        return (slots * top_weights.unsqueeze(-1).to(slots.dtype)).sum(dim=1)
