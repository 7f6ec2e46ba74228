"""Moves routed assignments to the ranks that hold their experts and back (expert parallelism).

Same interface as LocalDispatcher. With EP size e and E global experts, rank `ep_rank` of the EP
group holds experts [ep_rank * E/e, (ep_rank + 1) * E/e).

dispatch(x [T, H], top_experts [T, k] global ids, keep):
  1. sort the kept assignments by global expert (stable). Because experts are laid out by rank,
     this also groups them by destination rank;
  2. exchange per-expert counts with one all_to_all of E integers: rank r learns how many rows
     each source sends to each of its local experts. Reading the counts (`tolist`) is the one
     host synchronisation of the layer on GPU;
  3. all_to_all_single the rows with uneven splits (autograd-aware: the backward is the reverse
     all_to_all);
  4. received rows arrive ordered (source rank, local expert); a stable sort puts them in local
     expert order for the grouped GEMM. Returns counts per local expert.
combine(expert_output, top_weights, handle) undoes 4, 3 and 1: un-sort, all_to_all back,
write each row into its (token, slot) place with unique indices, weight and sum over k.

Every rank of the EP group must call dispatch/combine (and run backward) for every layer, even
with zero tokens; zero rows in either direction are fine. The input `x` must require grad on all
ranks or on none, or the backward collectives would not match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist

from aria_train.moe.dispatcher import slots_by_expert


def _all_to_all(x: torch.Tensor, output_splits: list[int], input_splits: list[int], group: Any) -> torch.Tensor:
    out = x.new_empty((sum(output_splits),) + tuple(x.shape[1:]))
    dist.all_to_all_single(
        out, x.contiguous(), output_split_sizes=output_splits, input_split_sizes=input_splits, group=group
    )
    return out


class AllToAll(torch.autograd.Function):
    """all_to_all_single along dim 0 with uneven splits; backward sends the gradients back."""

    @staticmethod
    def forward(ctx, x, output_splits, input_splits, group):
        ctx.output_splits, ctx.input_splits, ctx.group = output_splits, input_splits, group
        return _all_to_all(x, output_splits, input_splits, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_to_all(grad, ctx.input_splits, ctx.output_splits, ctx.group), None, None, None


def all_to_all(x: torch.Tensor, output_splits: list[int], input_splits: list[int], group: Any) -> torch.Tensor:
    """Differentiable all_to_all_single: row block i of `x` (input_splits[i] rows) goes to rank i
    of `group`; block j of the result (output_splits[j] rows) came from rank j."""
    return AllToAll.apply(x, output_splits, input_splits, group)


@dataclass
class AllToAllDispatchHandle:
    kept_slots: torch.Tensor  # [N_send] flat (token * k + slot) index of each sent row, in send order
    num_slots: int  # T * k
    input_splits: list[int]  # rows sent to each EP rank
    output_splits: list[int]  # rows received from each EP rank
    unsort: torch.Tensor  # [N_recv] position in local-expert order of each row in receive order


class AllToAllDispatcher:
    def __init__(self, num_experts_global: int, ep_group: Any):
        self.num_experts = num_experts_global
        self.group = ep_group
        self.ep_size = dist.get_world_size(ep_group)
        if num_experts_global % self.ep_size != 0:
            raise ValueError(f"EP size {self.ep_size} does not divide the expert count {num_experts_global}")
        self.num_local_experts = num_experts_global // self.ep_size

    def dispatch(
        self, x: torch.Tensor, top_experts: torch.Tensor, keep: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor, AllToAllDispatchHandle]:
        """x: [T, H]; top_experts: [T, k] global ids; keep: [T, k] bool (None = dropless).

        Returns expert_input [N_recv, H] sorted by local expert, counts [E_local], and the handle.
        """
        ep, local = self.ep_size, self.num_local_experts
        top_k = top_experts.shape[1]
        flat_experts = top_experts.reshape(-1)
        kept_slots = slots_by_expert(flat_experts, keep)
        send_counts = torch.bincount(flat_experts[kept_slots], minlength=self.num_experts)  # [E]
        # recv_counts[src * local + j]: rows source `src` sends to my local expert j.
        recv_counts = _all_to_all(send_counts, [local] * ep, [local] * ep, self.group)
        splits = torch.stack((send_counts.view(ep, local).sum(1), recv_counts.view(ep, local).sum(1)))
        recv_per_source_expert = recv_counts.view(ep, local)
        splits_host, recv_host = splits.tolist(), recv_per_source_expert.tolist()  # the host sync
        input_splits, output_splits = splits_host
        rows = x.index_select(0, torch.div(kept_slots, top_k, rounding_mode="floor"))
        received = all_to_all(rows, output_splits, input_splits, self.group)
        # local expert of each received row, in receive order (source-major)
        counts_flat = torch.tensor(sum(recv_host, []), dtype=torch.long, device=x.device)
        local_ids = torch.arange(local, device=x.device).repeat(ep)
        expert_of_row = torch.repeat_interleave(local_ids, counts_flat, output_size=sum(output_splits))
        sort_order = torch.argsort(expert_of_row, stable=True)  # receive position of each sorted row
        unsort = torch.empty_like(sort_order)
        unsort[sort_order] = torch.arange(sort_order.numel(), device=x.device)
        expert_input = received.index_select(0, sort_order)
        counts = recv_per_source_expert.sum(0)  # [E_local]
        handle = AllToAllDispatchHandle(kept_slots, flat_experts.numel(), input_splits, output_splits, unsort)
        return expert_input, counts, handle

    def combine(
        self, expert_output: torch.Tensor, top_weights: torch.Tensor, handle: AllToAllDispatchHandle
    ) -> torch.Tensor:
        """expert_output: [N_recv, H] in local-expert order; top_weights: [T, k] -> [T, H]"""
        num_tokens, top_k = top_weights.shape
        received_order = expert_output.index_select(0, handle.unsort)
        returned = all_to_all(received_order, handle.input_splits, handle.output_splits, self.group)
        slots = returned.new_zeros(handle.num_slots, returned.shape[-1])
        slots = slots.index_copy(0, handle.kept_slots, returned)  # dropped slots stay zero
        slots = slots.view(num_tokens, top_k, returned.shape[-1])  # explicit: T may be 0
        return (slots * top_weights.unsqueeze(-1).to(slots.dtype)).sum(dim=1)
