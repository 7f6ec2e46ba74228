"""Applies expert parallelism to a model from the outside; the model code stays unaware.

For every MoELayer: `experts` is cut to this rank's slice of the global experts, described by
the ExpertLayout built here (the rank's EP position; aria_train.moe.layout), and the dispatcher
becomes the all-to-all one over the EP group. Works on meta tensors (build on meta, apply, to_empty,
init_weights(seed): init is per global expert, so the rank gets exactly its slice of the
single-rank model) and on materialised ones (the slice is copied, the full tensor freed).
"""

from __future__ import annotations

import torch
from torch import nn

from aria_train.moe.alltoall import AllToAllDispatcher
from aria_train.moe.experts import GroupedExperts
from aria_train.moe.layer import MoELayer
from aria_train.moe.layout import ExpertLayout
from aria_train.parallel.groups import ParallelGroups


def apply_expert_parallel(model: nn.Module, groups: ParallelGroups) -> nn.Module:
    """Slices routed experts to this rank's share and swaps in the all-to-all dispatcher.
    ep_size 1 leaves the model untouched. Returns the model (changed in place)."""
    if groups.ep_size == 1:
        return model
    for name, layer in model.named_modules():
        if not isinstance(layer, MoELayer):
            continue
        experts = layer.experts
        if experts.layout.ep_size != 1:
            raise RuntimeError(f"{name}.experts is already sharded ({experts.layout})")
        layout = groups.expert_layout(experts.num_experts)
        _slice_experts(experts, layout)
        layer.dispatcher = AllToAllDispatcher(layout, groups.ep_group)
    return model


@torch.no_grad()
def _slice_experts(experts: GroupedExperts, layout: ExpertLayout) -> None:
    for param_name, param in list(experts.named_parameters(recurse=False)):
        piece = param[layout.first : layout.end]
        if not piece.is_meta:
            piece = piece.clone()  # drop the reference to the full tensor
        setattr(experts, param_name, nn.Parameter(piece, requires_grad=param.requires_grad))
    experts.layout = layout
