"""Moving routed assignments to their experts and back: the TokenDispatcher contract.

A token routed to k experts makes k assignments, its (token, slot) pairs. Every dispatcher does
the same local work and differs only in communication (as megatron-core's token dispatchers
separate the two):

  dispatch(x_TH, top_experts_TK, keep_TK) -> (expert_input_NH, counts_e, handle)
    local:  sort the kept assignments by global expert (stable: token order within an expert),
            gather their rows of x, count them per global expert;
    comm:   `_exchange` brings every row to the rank holding its expert and returns them sorted
            by local expert, with the rows per local expert;
  combine(expert_output_NH, top_weights_TK, handle) -> y_TH
    comm:   `_return` sends every expert output back to the rank and position it came from
            (dispatch order);
    local:  write each row into its (token, slot) place, weight by the router and sum over k.
Every write goes through unique indices, so the result is deterministic on every device.
Dropped assignments (keep False) contribute zero. T may be 0 (no tokens on this rank).

Host synchronisation: the local work keeps every count on the device (no torch.bincount, which
reads its input's maximum back on CUDA; no boolean indexing when dropless), so a layer reads the
device once, where the all-to-all needs its split sizes (AllToAllDispatcher), and not at all
without communication. A capacity limit (keep given) adds one read: how many assignments stay.

Implementations: LocalDispatcher (one rank holds every expert: no communication) and
AllToAllDispatcher (aria_train.moe.alltoall: expert parallelism over all_to_all).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Optional

import torch


def count_per_expert(experts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """experts: [N] global expert ids -> [E] int64 counts, by a scatter-add on the device."""
    counts = torch.zeros(num_experts, dtype=torch.long, device=experts.device)
    return counts.scatter_add_(0, experts, torch.ones_like(experts))


def slots_by_expert(flat_experts: torch.Tensor, keep: Optional[torch.Tensor]) -> torch.Tensor:
    """flat_experts: [T*k] expert of each (token, slot); keep: [T, k] bool or None ->
    the kept flat slots, sorted by expert (stable: token order within an expert)."""
    slots = torch.arange(flat_experts.numel(), device=flat_experts.device)
    if keep is not None:
        slots = slots[keep.reshape(-1)]
    return slots[torch.argsort(flat_experts[slots], stable=True)]


@dataclass
class DispatchHandle:
    """What combine needs to undo a dispatch."""

    kept_slots: torch.Tensor  # [N_sent] flat (token * k + slot) index of each row, in global-expert order
    num_slots: int  # T * k
    exchange: Any = None  # the communication's own record (None when there was none)


class TokenDispatcher(abc.ABC):
    """Dispatch and combine; subclasses implement only the communication."""

    def __init__(self, num_experts: int):
        self.num_experts = num_experts  # E, global

    def dispatch(
        self, x_TH: torch.Tensor, top_experts_TK: torch.Tensor, keep_TK: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor, DispatchHandle]:
        """x_TH: [T, H]; top_experts_TK: [T, k] global expert ids; keep_TK: [T, k] bool (None =
        dropless) -> expert_input [N, H] sorted by local expert, counts [e] rows per local
        expert, and the handle for `combine`."""
        top_k = top_experts_TK.shape[1]
        flat_experts = top_experts_TK.reshape(-1)
        kept_slots = slots_by_expert(flat_experts, keep_TK)
        rows_NH = x_TH.index_select(0, torch.div(kept_slots, top_k, rounding_mode="floor"))
        counts_E = count_per_expert(flat_experts[kept_slots], self.num_experts)
        expert_input, counts_e, exchange = self._exchange(rows_NH, counts_E)
        return expert_input, counts_e, DispatchHandle(kept_slots, flat_experts.numel(), exchange)

    def combine(
        self, expert_output: torch.Tensor, top_weights_TK: torch.Tensor, handle: DispatchHandle
    ) -> torch.Tensor:
        """expert_output: [N, H] in the order dispatch returned; top_weights_TK: [T, k] -> [T, H]"""
        num_tokens, top_k = top_weights_TK.shape
        returned_NH = self._return(expert_output, handle.exchange)
        hidden = returned_NH.shape[-1]
        slots = returned_NH.new_zeros(handle.num_slots, hidden)
        slots = slots.index_copy(0, handle.kept_slots, returned_NH)  # dropped slots stay zero
        slots_TKH = slots.view(num_tokens, top_k, hidden)  # explicit: T may be 0
        return (slots_TKH * top_weights_TK.unsqueeze(-1).to(slots_TKH.dtype)).sum(dim=1)

    @abc.abstractmethod
    def _exchange(self, rows_NH: torch.Tensor, counts_E: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """rows_NH: this rank's kept rows sorted by global expert; counts_E: [E] rows per global
        expert -> (the rows this rank's experts process, sorted by local expert; counts [e];
        the record `_return` needs)."""

    @abc.abstractmethod
    def _return(self, expert_output: torch.Tensor, exchange: Any) -> torch.Tensor:
        """The inverse of `_exchange`: expert outputs back to their rows' rank, in the order
        `_exchange` received them (global-expert order)."""


class LocalDispatcher(TokenDispatcher):
    """One rank holds every expert: rows stay where they are."""

    def _exchange(self, rows_NH, counts_E):
        return rows_NH, counts_E, None

    def _return(self, expert_output, exchange):
        return expert_output
