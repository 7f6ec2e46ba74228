"""Applies expert parallelism to a model from the outside; the model code stays unaware.

For every MoELayer: `experts` is cut to this rank's slice [ep_rank * E/e, (ep_rank + 1) * E/e)
of the global experts (first_expert / num_experts updated), and the dispatcher becomes the
all-to-all one over the EP group. Works on meta tensors (build on meta, apply, to_empty,
init_weights(seed): init is per global expert, so the rank gets exactly its slice of the
single-rank model) and on materialised ones (the slice is copied, the full tensor freed).
"""

from __future__ import annotations

import torch
from torch import nn

from aria_train.config.schema import ConfigError
from aria_train.moe.alltoall import AllToAllDispatcher
from aria_train.moe.experts import GroupedExperts
from aria_train.moe.layer import MoELayer
from aria_train.parallel.groups import ParallelGroups


def apply_expert_parallel(model: nn.Module, groups: ParallelGroups) -> nn.Module:
    """Slices routed experts to this rank's share and swaps in the all-to-all dispatcher.
    ep_size 1 leaves the model untouched. Returns the model (changed in place)."""
    if groups.ep_size == 1:
        return model
    for name, layer in model.named_modules():
        if not isinstance(layer, MoELayer):
            continue
        num_experts = layer.cfg.num_experts
        if num_experts % groups.ep_size != 0:
            raise ConfigError(f"parallel.ep_size={groups.ep_size} does not divide model.moe.num_experts={num_experts}")
        experts = layer.experts
        if experts.num_experts != num_experts or experts.first_expert != 0:
            raise RuntimeError(f"{name}.experts is already sharded ({experts.num_experts} of {num_experts} experts)")
        first, last = groups.expert_range(num_experts)
        _slice_experts(experts, first, last)
        layer.dispatcher = AllToAllDispatcher(num_experts, groups.ep_group)
    return model


@torch.no_grad()
def _slice_experts(experts: GroupedExperts, first: int, last: int) -> None:
    for param_name, param in list(experts.named_parameters(recurse=False)):
        piece = param[first:last]
        if not piece.is_meta:
            piece = piece.clone()  # drop the reference to the full tensor
        setattr(experts, param_name, nn.Parameter(piece, requires_grad=param.requires_grad))
    experts.first_expert = first
    experts.num_experts = last - first
