"""The communication of expert parallelism: routed rows to the ranks that hold their experts and
back (a TokenDispatcher, aria_train.moe.dispatcher, which does the local sorting and combining).

The experts are split by ExpertLayout: rank `ep_rank` of the EP group holds the e = E / ep_size
experts [ep_rank * e, (ep_rank + 1) * e). Dispatch:
  1. (shared) sort the kept assignments by global expert (stable). Because experts are laid out
     by rank, this also groups them by destination rank;
  2. exchange per-expert counts with one all_to_all of E integers: rank r learns how many rows
     each source sends to each of its local experts. Reading the split sizes (rows to and from
     each EP rank, one `tolist` of 2 x ep_size integers) is the one host synchronisation of the
     layer on GPU; the per-expert counts stay on the device;
  3. all_to_all_single the rows with uneven splits (autograd-aware: the backward is the reverse
     all_to_all);
  4. received rows arrive ordered (source rank, local expert); a stable sort puts them in local
     expert order for the grouped GEMM. Returns counts per local expert.
Combine undoes 4 and 3 (un-sort, all_to_all back); the shared part writes each row into its
(token, slot) place with unique indices, weights and sums over k.

Every rank of the EP group must call dispatch/combine (and run backward) for every layer, even
with zero tokens; zero rows in either direction are fine. The input `x` must require grad on all
ranks or on none, or the backward collectives would not match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from aria_train.moe.dispatcher import TokenDispatcher
from aria_train.moe.layout import ExpertLayout


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
class AllToAllExchange:
    """How the rows travelled, for the way back."""

    input_splits: list[int]  # rows sent to each EP rank
    output_splits: list[int]  # rows received from each EP rank
    unsort: torch.Tensor  # [N_recv] position in local-expert order of each row in receive order


class AllToAllDispatcher(TokenDispatcher):
    """Expert parallelism: rows go to the EP rank holding their expert and come back."""

    def __init__(self, layout: ExpertLayout, ep_group: Any):
        super().__init__(layout.num_experts)
        if dist.get_world_size(ep_group) != layout.ep_size:
            raise ValueError(f"EP group of {dist.get_world_size(ep_group)} ranks for a layout of {layout.ep_size}")
        self.layout = layout
        self.group = ep_group

    def _exchange(self, rows_NH, counts_E):
        ep, local = self.layout.ep_size, self.layout.num_local_experts
        # recv_counts[src * e + j]: rows source `src` sends to my local expert j.
        recv_counts = _all_to_all(counts_E, [local] * ep, [local] * ep, self.group)
        splits = torch.cat((counts_E.view(ep, local).sum(1), recv_counts.view(ep, local).sum(1)))
        sizes = splits.tolist()  # the layer's one host synchronisation
        input_splits, output_splits = sizes[:ep], sizes[ep:]
        received = all_to_all(rows_NH, output_splits, input_splits, self.group)
        # local expert of each received row, in receive order (source-major); the counts stay on
        # the device: output_size spares repeat_interleave its own read of their sum
        device = rows_NH.device
        local_ids = torch.arange(local, device=device).repeat(ep)
        expert_of_row = torch.repeat_interleave(local_ids, recv_counts, output_size=sum(output_splits))
        sort_order = torch.argsort(expert_of_row, stable=True)  # receive position of each sorted row
        unsort = torch.empty_like(sort_order)
        unsort[sort_order] = torch.arange(sort_order.numel(), device=device)
        counts_e = recv_counts.view(ep, local).sum(0)
        return received.index_select(0, sort_order), counts_e, AllToAllExchange(input_splits, output_splits, unsort)

    def _return(self, expert_output, exchange: AllToAllExchange):
        received_order = expert_output.index_select(0, exchange.unsort)
        return all_to_all(received_order, exchange.input_splits, exchange.output_splits, self.group)
