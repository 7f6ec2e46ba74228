"""Choosing the optimizer a run trains with."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from aria_train.optim.config import OptimizerConfig
from aria_train.optim.flat_state import ParamRule
from aria_train.optim.protocol import TrainOptimizer
from aria_train.optim.replicated import ReplicatedAdamW
from aria_train.optim.zero1 import Zero1Optimizer
from aria_train.parallel.groups import ParallelGroups


def build_optimizer(
    model: nn.Module, opt_cfg: OptimizerConfig, groups: ParallelGroups, param_groups_rule: Optional[ParamRule] = None,
    bucket_size_mb: float = 4.0, param_dtype: Optional[torch.dtype] = None,
) -> TrainOptimizer:
    """Zero1Optimizer when opt_cfg.zero1 and world size > 1, else ReplicatedAdamW.

    `param_groups_rule(name, param)` returns {"decay": bool, "lr_scale": float} overrides
    (default: decay matrices only). `param_dtype` bf16 = the bf16 layout (bf16 parameters, fp32
    main gradients and masters, train.precision=bf16): both optimizers take the model's fp32
    values as masters and cast the parameters they train; frozen parameters (train.freeze: no
    master, no state) are cast here, so every weight is 2 bytes as the accounting counts it."""
    if param_dtype is not None:
        cast_frozen_parameters(model, param_dtype)
    if opt_cfg.zero1 and groups.world_size > 1:
        return Zero1Optimizer(model, opt_cfg, groups, bucket_size_mb=bucket_size_mb, param_rule=param_groups_rule,
                              param_dtype=param_dtype)
    return ReplicatedAdamW(model, opt_cfg, groups, param_rule=param_groups_rule, param_dtype=param_dtype)


def cast_frozen_parameters(model: nn.Module, dtype: torch.dtype) -> int:
    """Casts the floating-point parameters that take no gradient to `dtype`; returns how many."""
    cast = 0
    for param in model.parameters():
        if not param.requires_grad and param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
            cast += 1
    return cast
