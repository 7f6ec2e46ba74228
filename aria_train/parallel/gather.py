"""All-gather along the batch dimension with gradients that flow back to the rank that owns
each row (the global-batch contrastive loss of stage 0 needs every rank's features).

Forward: every rank's [b, ...] block, concatenated in rank order -> [W * b, ...].
Backward: each rank holds d(its local loss)/d(all W * b rows); the gradient of the global loss
(the SUM of the local losses, aria_train.optim.protocol's convention) with respect to this rank's
rows is the SUM over ranks of their gradients for these rows: an all-reduce of the gathered
gradient, then this rank's slice. (open_clip's gather_with_grad does the same through
torch.distributed.nn.functional.all_gather.) gloo has no reduce-scatter, so the all-reduce it is.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: torch.Tensor, group: Any) -> torch.Tensor:
        world = dist.get_world_size(group)
        ctx.group, ctx.rank, ctx.rows = group, dist.get_rank(group), local.shape[0]
        pieces = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(pieces, local.contiguous(), group=group)
        return torch.cat(pieces, dim=0)

    @staticmethod
    def backward(ctx, grad_all: torch.Tensor):
        grad_all = grad_all.contiguous()
        dist.all_reduce(grad_all, op=dist.ReduceOp.SUM, group=ctx.group)
        start = ctx.rank * ctx.rows
        return grad_all[start : start + ctx.rows], None


def all_gather_with_grad(local: torch.Tensor, group: Optional[Any] = None, distributed: bool = True) -> torch.Tensor:
    """local [b, ...] (the same b on every rank of `group`) -> [W * b, ...] in rank order, with
    the backward described above. Without torch.distributed (or `distributed=False`) it returns
    `local` itself."""
    if not distributed or not dist.is_available() or not dist.is_initialized():
        return local
    if dist.get_world_size(group) == 1:
        return local
    return _AllGatherWithGrad.apply(local, group)


def all_gather_rows(local: torch.Tensor, group: Optional[Any] = None, distributed: bool = True) -> torch.Tensor:
    """all_gather_with_grad without autograd (sample weights, labels)."""
    with torch.no_grad():
        return all_gather_with_grad(local.detach(), group, distributed)

