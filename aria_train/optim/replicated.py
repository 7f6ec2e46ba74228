"""AdamW with the full optimizer state on every rank (no ZeRO): the single-rank optimizer, and
the data-parallel fallback when ZeRO-1 is off.

Gradients: summed at finish_grad_sync, dense parameters over the world and routed-expert
parameters over their expert-data-parallel group (one flat all-reduce each). The update is
torch.optim.AdamW (decoupled weight decay), with weight decay only where the parameter rule says
so (default: matrices, not norms), through torch's fused kernel on CPU and CUDA alike (so CI
runs the GPU's update). State dict: the "aria-flat-v1" format of aria_train.optim.flat_state,
with whole tensors.

Precision (`param_dtype`): fp32 parameters are their own master weights and .grad their
gradients. With bf16 parameters (Megatron's mixed-precision layout) each parameter gets an fp32
master (its value before the cast) and an fp32 main gradient: a hook adds every micro-batch's
bf16 .grad into it and releases the .grad; AdamW updates the masters from the main gradients,
and the parameters take the masters rounded to bf16.
"""

from __future__ import annotations

import weakref
from functools import partial
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
        self, model: nn.Module, opt_cfg: OptimizerConfig, groups: Any = None, param_rule: Optional[ParamRule] = None,
        param_dtype: Optional[torch.dtype] = None,
    ):
        """param_dtype: the dtype the parameters take (None = their own; bf16 = the bf16 layout)."""
        self.cfg = opt_cfg
        self.groups = groups
        self.distributed = bool(groups is not None and groups.distributed)
        self.infos = collect_params(model, opt_cfg, param_rule)
        self.main_grads: Optional[list[torch.Tensor]] = None
        self._hooks: list = []
        if param_dtype is not None and param_dtype.itemsize < 4:
            self.masters = self._split_masters(param_dtype)
        else:
            self.masters = [info.param for info in self.infos]  # fp32 parameters update themselves
        param_groups: dict[tuple[float, float], list] = {}
        for info, master in zip(self.infos, self.masters):
            param_groups.setdefault((info.weight_decay, info.lr_scale), []).append(master)
        self.optimizer = torch.optim.AdamW(
            [{"params": ps, "weight_decay": wd, "lr_scale": scale} for (wd, scale), ps in param_groups.items()],
            lr=opt_cfg.lr,
            betas=(opt_cfg.beta1, opt_cfg.beta2),
            eps=opt_cfg.eps,
            fused=use_fused_adamw(self.masters),
        )
        for master in self.masters:  # eager state, so a checkpoint can be loaded before the first step
            self.optimizer.state[master] = {
                "step": _step_tensor(0, master.device),
                "exp_avg": torch.zeros_like(master, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(master, memory_format=torch.preserve_format),
            }
        self.step_count = 0

    @torch.no_grad()
    def _split_masters(self, param_dtype: torch.dtype) -> list[nn.Parameter]:
        """fp32 masters from the parameters' current values, then the parameters cast to
        param_dtype, fp32 main gradients, and the hooks that fill them."""
        masters = [nn.Parameter(info.param.detach().float().clone()) for info in self.infos]
        self.main_grads = [torch.zeros_like(master) for master in masters]
        add = weakref.WeakMethod(self._add_to_main_grad)  # see Zero1Optimizer: no reference cycle
        for index, info in enumerate(self.infos):
            info.param.data = info.param.data.to(param_dtype)
            self._hooks.append(info.param.register_post_accumulate_grad_hook(partial(_call_weak, add, index)))
        return masters

    @torch.no_grad()
    def _add_to_main_grad(self, index: int, param: nn.Parameter) -> None:
        self.main_grads[index].add_(param.grad)
        param.grad = None

    # -- the TrainOptimizer protocol --------------------------------------------------------------
    def zero_grad(self) -> None:
        for info in self.infos:
            info.param.grad = None
        for grad in self.main_grads or ():
            grad.zero_()

    def begin_microbatch(self, is_last: bool) -> None:
        pass

    def finish_grad_sync(self) -> None:
        if not self.distributed:
            return
        g = self.groups
        grads = self._grads()
        self._all_reduce([gr for gr, i in zip(grads, self.infos) if not i.is_expert], g.world_group, g.world_size)
        self._all_reduce([gr for gr, i in zip(grads, self.infos) if i.is_expert], g.edp_group, g.edp_size)

    @torch.no_grad()
    def step(self, lr: float) -> float:
        grads = self._grads()
        device = self.masters[0].device if self.masters else torch.device("cpu")
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
        for master, grad in zip(self.masters, grads):
            master.grad = grad
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        self.optimizer.step()
        self._masters_to_params()
        self.step_count += 1
        return norm

    def reset_from_model(self) -> None:
        """The parameters were replaced by a weights-only load: they become the masters (fp32
        parameters already are)."""
        if self.main_grads is not None:
            with torch.no_grad():
                for info, master in zip(self.infos, self.masters):
                    master.copy_(info.param)

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def state_bytes(self) -> int:
        """exp_avg + exp_avg_sq, plus the fp32 masters when they are copies (bf16 parameters);
        fp32 parameters double as masters (not counted)."""
        total = 0
        for master in self.masters:
            st = self.optimizer.state[master]
            total += st["exp_avg"].numel() * st["exp_avg"].element_size()
            total += st["exp_avg_sq"].numel() * st["exp_avg_sq"].element_size()
            if self.main_grads is not None:
                total += master.numel() * master.element_size()
        return total

    # -- checkpoint format ------------------------------------------------------------------------
    def sharded_state_dict(self) -> dict:
        state = {}
        for info, master in zip(self.infos, self.masters):
            st = self.optimizer.state[master]
            tensors = {"master": master.data, "exp_avg": st["exp_avg"], "exp_avg_sq": st["exp_avg_sq"]}
            state[info.name] = {
                key: FlatShard(info.global_shape, info.global_offset, t.view(-1)) for key, t in tensors.items()
            }
        return {"format": STATE_FORMAT, "step": self.step_count, "state": state}

    @torch.no_grad()
    def load_sharded_state_dict(self, state: dict) -> None:
        check_format(state)
        self.step_count = int(state["step"])
        for info, master in zip(self.infos, self.masters):
            if info.name not in state["state"]:
                raise KeyError(f"optimizer state has no entry for parameter {info.name}")
            st = self.optimizer.state[master]
            targets = {"master": master.data, "exp_avg": st["exp_avg"], "exp_avg_sq": st["exp_avg_sq"]}
            for key, target in targets.items():
                flat = target.view(-1)
                copied = copy_overlap(flat, info.global_offset, state["state"][info.name][key])
                if copied != flat.numel():
                    raise ValueError(f"optimizer state {info.name}.{key} covers {copied} of {flat.numel()} elements")
            st["step"] = _step_tensor(self.step_count, master.device)
        self._masters_to_params()

    # -- helpers ----------------------------------------------------------------------------------
    @torch.no_grad()
    def _masters_to_params(self) -> None:
        if self.main_grads is not None:
            for info, master in zip(self.infos, self.masters):
                info.param.copy_(master)

    def _grads(self) -> list[torch.Tensor]:
        """The gradient of every parameter: its main gradient, or its .grad (zeros if none)."""
        if self.main_grads is not None:
            return self.main_grads
        for info in self.infos:
            if info.param.grad is None:
                info.param.grad = torch.zeros_like(info.param)
        return [info.param.grad for info in self.infos]

    @staticmethod
    def _all_reduce(grads: list, group: Any, size: int) -> None:
        if not grads or size == 1:
            return
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat, group=group)
        for grad, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            grad.copy_(reduced)

    @staticmethod
    def _sum_sq(grads: list, device: torch.device) -> torch.Tensor:
        """Sum of squares of every gradient: one fused norm kernel per dtype (no squared copies)."""
        if not grads:
            return torch.zeros((), dtype=torch.float32, device=device)
        norms = torch._foreach_norm(grads, 2)
        return torch.stack([n.float() for n in norms]).pow(2).sum()

    def __del__(self) -> None:
        if getattr(self, "_hooks", None):
            self.close()


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


def _call_weak(method: weakref.WeakMethod, index: int, param: nn.Parameter) -> None:
    bound = method()
    if bound is not None:  # an optimizer that is gone no longer collects gradients
        bound(index, param)
