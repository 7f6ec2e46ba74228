"""AdamW with the full optimizer state on every rank (no ZeRO): the single-rank optimizer, and
the data-parallel fallback when ZeRO-1 is off.

Gradients: summed at finish_grad_sync, dense parameters over the world and routed-expert
parameters over their expert-data-parallel group (one flat all-reduce each). The parameters are
the fp32 master weights; the update is torch.optim.AdamW (decoupled weight decay), with weight
decay only where the parameter rule says so (default: matrices, not norms), through torch's fused
kernel on CPU and CUDA alike (so CI runs the GPU's update). State dict: the
"aria-flat-v1" format of aria_train.optim.flat_state, with whole tensors.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from aria_train.optim.config import OptimizerConfig
from aria_train.optim.clip import clip_coefficient
from aria_train.optim.flat_state import STATE_FORMAT, FlatShard, ParamRule, check_format, collect_params, copy_overlap


class ReplicatedAdamW:
    def __init__(
        self, model: nn.Module, opt_cfg: OptimizerConfig, groups: Any = None, param_rule: Optional[ParamRule] = None
    ):
        self.cfg = opt_cfg
        self.groups = groups
        self.distributed = bool(groups is not None and groups.distributed)
        self.infos = collect_params(model, opt_cfg, param_rule)
        param_groups: dict[tuple[float, float], list] = {}
        for info in self.infos:
            param_groups.setdefault((info.weight_decay, info.lr_scale), []).append(info.param)
        self.optimizer = torch.optim.AdamW(
            [{"params": ps, "weight_decay": wd, "lr_scale": scale} for (wd, scale), ps in param_groups.items()],
            lr=opt_cfg.lr,
            betas=(opt_cfg.beta1, opt_cfg.beta2),
            eps=opt_cfg.eps,
            fused=use_fused_adamw([info.param for info in self.infos]),
        )
        for info in self.infos:  # eager state, so a checkpoint can be loaded before the first step
            self.optimizer.state[info.param] = {
                "step": _step_tensor(0, info.param.device),
                "exp_avg": torch.zeros_like(info.param, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(info.param, memory_format=torch.preserve_format),
            }
        self.step_count = 0

    # -- the TrainOptimizer protocol --------------------------------------------------------------
    def zero_grad(self) -> None:
        for info in self.infos:
            info.param.grad = None

    def begin_microbatch(self, is_last: bool) -> None:
        pass

    def finish_grad_sync(self) -> None:
        if not self.distributed:
            return
        g = self.groups
        dense = [i.param for i in self.infos if not i.is_expert]
        experts = [i.param for i in self.infos if i.is_expert]
        self._all_reduce_grads(dense, g.world_group, g.world_size)
        self._all_reduce_grads(experts, g.edp_group, g.edp_size)

    @torch.no_grad()
    def step(self, lr: float) -> float:
        grads = [self._grad(info.param) for info in self.infos]
        device = self.infos[0].param.device if self.infos else torch.device("cpu")
        dense_sq = self._sum_sq([g for g, i in zip(grads, self.infos) if not i.is_expert], device)
        expert_sq = self._sum_sq([g for g, i in zip(grads, self.infos) if i.is_expert], device)
        if self.distributed and self.groups.ep_size > 1:
            dist.all_reduce(expert_sq, group=self.groups.ep_group)  # each EP group holds every expert once
        total_norm = (dense_sq + expert_sq).sqrt()
        norm = float(total_norm)
        if not torch.isfinite(total_norm):
            return norm
        coef = clip_coefficient(total_norm, self.cfg.clip_grad)
        if coef is not None and grads:
            torch._foreach_mul_(grads, coef)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        self.optimizer.step()
        self.step_count += 1
        return norm

    def reset_from_model(self) -> None:
        """Nothing to do: the fp32 parameters are the master weights."""

    def close(self) -> None:
        """Nothing registered on the model."""

    def state_bytes(self) -> int:
        """exp_avg + exp_avg_sq; the fp32 parameters double as master weights (not counted)."""
        total = 0
        for info in self.infos:
            st = self.optimizer.state[info.param]
            total += st["exp_avg"].numel() * st["exp_avg"].element_size()
            total += st["exp_avg_sq"].numel() * st["exp_avg_sq"].element_size()
        return total

    # -- checkpoint format ------------------------------------------------------------------------
    def sharded_state_dict(self) -> dict:
        state = {}
        for info in self.infos:
            st = self.optimizer.state[info.param]
            tensors = {"master": info.param.data, "exp_avg": st["exp_avg"], "exp_avg_sq": st["exp_avg_sq"]}
            state[info.name] = {
                key: FlatShard(info.global_shape, info.global_offset, t.view(-1)) for key, t in tensors.items()
            }
        return {"format": STATE_FORMAT, "step": self.step_count, "state": state}

    @torch.no_grad()
    def load_sharded_state_dict(self, state: dict) -> None:
        check_format(state)
        self.step_count = int(state["step"])
        for info in self.infos:
            if info.name not in state["state"]:
                raise KeyError(f"optimizer state has no entry for parameter {info.name}")
            st = self.optimizer.state[info.param]
            targets = {"master": info.param.data, "exp_avg": st["exp_avg"], "exp_avg_sq": st["exp_avg_sq"]}
            for key, target in targets.items():
                flat = target.view(-1)
                copied = copy_overlap(flat, info.global_offset, state["state"][info.name][key])
                if copied != flat.numel():
                    raise ValueError(f"optimizer state {info.name}.{key} covers {copied} of {flat.numel()} elements")
            st["step"] = _step_tensor(self.step_count, info.param.device)

    # -- helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _grad(param: nn.Parameter) -> torch.Tensor:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        return param.grad

    def _all_reduce_grads(self, params: list, group: Any, size: int) -> None:
        if not params or size == 1:
            return
        grads = [self._grad(p) for p in params]
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat, group=group)
        for grad, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            grad.copy_(reduced)

    @staticmethod
    def _sum_sq(grads: list, device: torch.device) -> torch.Tensor:
        if not grads:
            return torch.zeros((), dtype=torch.float32, device=device)
        return torch.stack([g.float().pow(2).sum() for g in grads]).sum().to(torch.float32)


def use_fused_adamw(params: list) -> bool:
    """torch's fused AdamW (one kernel for all parameters of a device and dtype) runs on CUDA and
    on CPU; it needs every parameter on one device type, in a floating dtype it supports."""
    devices = {p.device.type for p in params}
    dtypes_ok = all(p.dtype in (torch.float32, torch.bfloat16, torch.float16) for p in params)
    return len(devices) == 1 and devices <= {"cpu", "cuda"} and dtypes_ok


def _step_tensor(step: int, device: torch.device) -> torch.Tensor:
    """AdamW's per-parameter step counter. The fused kernel reads it on the parameter's device (a
    CPU counter next to a CUDA parameter fails on the first step), as fp32."""
    return torch.full((), float(step), dtype=torch.float32, device=device)
