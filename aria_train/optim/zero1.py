"""ZeRO-1 distributed AdamW: optimizer state sharded over data-parallel ranks, gradients
reduce-scattered per bucket while backward is still running.

Layout
  * Trainable parameters are split by kind -- dense (reduced and sharded over the world) and
    routed experts (reduced and sharded over the expert-data-parallel group) -- and by dtype.
    Each kind has one contiguous flat parameter buffer and one flat gradient buffer; every
    parameter becomes a view of the parameter buffer (`p.data`) and its `.grad` a view of the
    gradient buffer, so micro-batch gradients accumulate in place and the all-gather writes the
    parameters directly. Do not move the model (`.to`) after building the optimizer.
  * The buffers are cut into buckets of about `bucket_size_mb`, walking parameters in reverse
    registration order (roughly the order backward produces them); a parameter is never split
    across buckets. Each bucket is zero-padded to a multiple of (group size x 16) elements so it
    splits evenly: rank r of the group owns elements [r * S, (r + 1) * S) of the bucket.
  * Each rank keeps, for its shards only, fp32 master weights and AdamW's exp_avg and exp_avg_sq.
  * Precision (`param_dtype`, Megatron's mixed-precision layout): with bf16 parameters the
    parameter buffer is bf16 (what forward and backward read), the gradient buffer fp32 (main
    gradients: each micro-batch's bf16 .grad is added into it by the hook and released, so the
    accumulation over micro-batches and the reduce-scatter are fp32), the masters fp32 (taken
    from the fp32 values the parameters had before the cast), and the all-gather sends the
    updated masters rounded to bf16. fp32 parameters: .grad IS the buffer view, as before.

Step protocol: see aria_train.optim.protocol. During the last micro-batch's backward a post-accumulate-grad hook counts the parameters of each
bucket; when a bucket is complete its reduce-scatter (SUM, async) is issued. Buckets are issued
strictly in one fixed order (the same on every rank, so the collectives match even when the
autograd engine finishes them in a different order, or a parameter gets no gradient on some
rank): a complete bucket waits for the ones before it. finish_grad_sync issues whatever is left
(parameters without a gradient count as zero) and waits for all of them.

step(lr): global norm = sqrt(all_reduce_world(sum of this rank's squared shard gradients)):
dense shards partition the dense parameters over the world; expert shards partition each EDP
group's experts, and the ep_size EDP groups hold disjoint experts, so every parameter is counted
once. Non-finite norm: no update, returns the norm. Otherwise clip as clip_grad_norm_ does, and
apply torch.optim.AdamW's single-tensor update (decoupled weight decay, bias corrections from
python floats) to the shard, then all_gather_into_tensor the updated shards into the parameters.

State dict: the "aria-flat-v1" format documented in aria_train.optim.flat_state.
"""

from __future__ import annotations

import math
import weakref
from functools import partial
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

from aria_train.optim.config import OptimizerConfig
from aria_train.optim.clip import clip_coefficient
from aria_train.optim.flat_state import (
    STATE_FORMAT,
    STATE_KEYS,
    FlatShard,
    ParamRule,
    check_format,
    collect_params,
    copy_overlap,
)
from aria_train.optim.zero1_buckets import Bucket, Entry, allocate_buffers, make_buckets
from aria_train.parallel.groups import ParallelGroups

_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class Zero1Optimizer:
    def __init__(
        self,
        model: nn.Module,
        opt_cfg: OptimizerConfig,
        groups: ParallelGroups,
        bucket_size_mb: float = 4.0,
        param_rule: Optional[ParamRule] = None,
        param_dtype: Optional[torch.dtype] = None,
    ):
        """param_dtype: the dtype the parameters take (None = their own; bf16 = the bf16 layout)."""
        self.cfg = opt_cfg
        self.groups = groups
        self.distributed = bool(groups.distributed)
        self.infos = collect_params(model, opt_cfg, param_rule)
        self.step_count = 0
        self._is_last = False
        self._next_launch = 0
        self._synced = False
        self.buckets = make_buckets(self.infos, groups, max(1, int(bucket_size_mb * 2**20)), param_dtype)
        self._param_buffers, self._grad_buffers = allocate_buffers(self.buckets)
        self._bucket_of: dict[int, tuple[Bucket, Entry]] = {}
        for bucket in self.buckets:
            for entry in bucket.entries:
                self._bucket_of[id(entry.info.param)] = (bucket, entry)
        # The hooks reach the optimizer through a weak reference: a strong one would make
        # parameter -> hook -> optimizer -> parameter a cycle that the garbage collector cannot
        # free (it does not traverse tensors that C++ also references), keeping the optimizer,
        # its buffers and its process groups (with their gloo threads) alive until process exit.
        on_grad_ready = weakref.WeakMethod(self._on_grad_ready)
        self._hooks = [
            info.param.register_post_accumulate_grad_hook(partial(_call_weak, on_grad_ready))
            for info in self.infos
        ]
        self.zero_grad()

    def _grad_view(self, bucket: Bucket, entry: Entry) -> torch.Tensor:
        return bucket.grad_flat[entry.start : entry.start + entry.numel].view_as(entry.info.param)

    # -- gradients --------------------------------------------------------------------------------
    @torch.no_grad()
    def _absorb_grad(self, bucket: Bucket, entry: Entry) -> None:
        """Moves what autograd left in .grad into the bucket's gradient buffer."""
        param, view = entry.info.param, self._grad_view(bucket, entry)
        grad = param.grad
        if bucket.grad_dtype != bucket.dtype:  # main gradient: this micro-batch's part, added
            if grad is not None:
                view.add_(grad)
                param.grad = None
            return
        if grad is not None and grad.data_ptr() != view.data_ptr():
            # someone replaced .grad (set to None, or an out-of-place accumulation): the new
            # tensor is the whole accumulated gradient
            view.copy_(grad)
        param.grad = view

    @torch.no_grad()
    def _on_grad_ready(self, param: nn.Parameter) -> None:
        bucket, entry = self._bucket_of[id(param)]
        self._absorb_grad(bucket, entry)
        if not self._is_last:
            return
        if bucket.launched:
            raise RuntimeError(f"gradient of {entry.info.name} arrived after its bucket was reduced")
        bucket.pending -= 1
        if bucket.pending == 0:
            self._launch_ready()

    def _launch_ready(self, force: bool = False) -> None:
        """Issues buckets in order while the next one is complete (or all of them, if force)."""
        while self._next_launch < len(self.buckets):
            bucket = self.buckets[self._next_launch]
            if bucket.pending > 0 and not force:
                return
            if bucket.group_size > 1:
                bucket.work = _reduce_scatter(
                    bucket.grad_shard, bucket.grad_flat, op=dist.ReduceOp.SUM, group=bucket.group, async_op=True
                )
            bucket.launched = True
            self._next_launch += 1

    def zero_grad(self) -> None:
        for buffer in self._grad_buffers:
            buffer.zero_()
        for bucket in self.buckets:
            main_grad = bucket.grad_dtype != bucket.dtype  # autograd writes a fresh bf16 .grad
            for entry in bucket.entries:
                entry.info.param.grad = None if main_grad else self._grad_view(bucket, entry)
        self._reset_sync()

    def _reset_sync(self) -> None:
        for bucket in self.buckets:
            bucket.pending = len(bucket.entries)
            bucket.launched = False
            bucket.work = None
        self._next_launch = 0
        self._is_last = False
        self._synced = False

    def begin_microbatch(self, is_last: bool) -> None:
        if is_last:
            self._reset_sync()
        self._is_last = is_last

    def finish_grad_sync(self) -> None:
        if self._synced:
            return
        # make sure gradients that bypassed the hooks land in the buffers
        for bucket in self.buckets:
            if not bucket.launched:
                for entry in bucket.entries:
                    self._absorb_grad(bucket, entry)
        self._launch_ready(force=True)
        for bucket in self.buckets:
            if bucket.work is not None:
                bucket.work.wait()
                bucket.work = None
        self._is_last = False
        self._synced = True

    # -- update -----------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, lr: float) -> float:
        self.finish_grad_sync()
        device = self.buckets[0].master.device if self.buckets else torch.device("cpu")
        sq = [b.grad_shard.float().pow(2).sum() for b in self.buckets]
        local_sq = torch.stack(sq).sum() if sq else torch.zeros((), device=device)
        if self.distributed and self.groups.world_size > 1:
            dist.all_reduce(local_sq, group=self.groups.world_group)
        total_norm = local_sq.sqrt()
        norm = float(total_norm)
        self._synced = False
        if not math.isfinite(norm):
            return norm
        coef = clip_coefficient(total_norm, self.cfg.clip_grad)
        self.step_count += 1
        cfg = self.cfg
        bias_correction1 = 1 - cfg.beta1**self.step_count
        bias_correction2 = 1 - cfg.beta2**self.step_count
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        for bucket in self.buckets:
            grad = bucket.grad_shard
            grad = grad.float() if grad.dtype != torch.float32 else grad
            if coef is not None:
                grad = grad * coef  # never in place: the shard may be the gradient buffer itself
            master, exp_avg, exp_avg_sq = bucket.master, bucket.exp_avg, bucket.exp_avg_sq
            for start, end, weight_decay, lr_scale in bucket.segments:
                if weight_decay != 0:
                    master[start:end].mul_(1 - (lr * lr_scale) * weight_decay)
            exp_avg.lerp_(grad, 1 - cfg.beta1)
            exp_avg_sq.mul_(cfg.beta2).addcmul_(grad, grad, value=1 - cfg.beta2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(cfg.eps)
            scales = {seg[3] for seg in bucket.segments}
            if scales == {1.0}:
                master.addcdiv_(exp_avg, denom, value=-step_size)
            else:
                for start, end, _, lr_scale in bucket.segments:
                    master[start:end].addcdiv_(
                        exp_avg[start:end], denom[start:end], value=-(lr * lr_scale) / bias_correction1
                    )
        self._gather_params()
        return norm

    @torch.no_grad()
    def _gather_params(self) -> None:
        works = []
        for bucket in self.buckets:
            shard = bucket.master.to(bucket.dtype)
            if bucket.group_size > 1:
                works.append(_all_gather(bucket.param_flat, shard, group=bucket.group, async_op=True))
            else:
                bucket.param_flat.copy_(shard)
        for work in works:
            work.wait()

    # -- checkpoint format ------------------------------------------------------------------------
    def _pieces(self):
        """(info, bucket, shard range [lo, hi), global flat offset) for each held piece."""
        for bucket in self.buckets:
            s0, s1 = bucket.shard_start, bucket.shard_start + bucket.shard_size
            for entry in bucket.entries:
                lo, hi = max(s0, entry.start), min(s1, entry.start + entry.numel)
                if hi > lo:
                    yield entry.info, bucket, lo - s0, hi - s0, entry.info.global_offset + (lo - entry.start)

    def sharded_state_dict(self) -> dict:
        state: dict = {}
        for info, bucket, lo, hi, offset in self._pieces():
            state[info.name] = {
                "master": FlatShard(info.global_shape, offset, bucket.master[lo:hi]),
                "exp_avg": FlatShard(info.global_shape, offset, bucket.exp_avg[lo:hi]),
                "exp_avg_sq": FlatShard(info.global_shape, offset, bucket.exp_avg_sq[lo:hi]),
            }
        return {"format": STATE_FORMAT, "step": self.step_count, "state": state}

    @torch.no_grad()
    def load_sharded_state_dict(self, state: dict) -> None:
        """Fills this rank's shards from `state` (any layout of FlatShards; see optim.flat_state), then
        writes the loaded master weights into the parameters (all-gather)."""
        check_format(state)
        for info, bucket, lo, hi, offset in self._pieces():
            if info.name not in state["state"]:
                raise KeyError(f"optimizer state has no entry for parameter {info.name}")
            per_state = state["state"][info.name]
            for key in STATE_KEYS:
                dest = getattr(bucket, key)[lo:hi]
                copied = copy_overlap(dest, offset, per_state[key])
                if copied != hi - lo:
                    raise ValueError(f"optimizer state {info.name}.{key} covers {copied} of {hi - lo} elements")
        self.step_count = int(state["step"])
        self._gather_params()

    @torch.no_grad()
    def reset_from_model(self) -> None:
        """After a weights-only load into the parameters (views of the parameter buffers): the
        master shards take the loaded values (in the bf16 layout: the bf16 values, widened);
        moments and step stay as they are."""
        for bucket in self.buckets:
            s0 = bucket.shard_start
            bucket.master.copy_(bucket.param_flat[s0 : s0 + bucket.shard_size])

    def state_bytes(self) -> int:
        """fp32 master + exp_avg + exp_avg_sq of this rank's shards (padding included)."""
        return sum(3 * b.shard_size * 4 for b in self.buckets)

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def __del__(self) -> None:
        if getattr(self, "_hooks", None):  # also when __init__ failed half-way
            self.close()


def _call_weak(method: weakref.WeakMethod, param: nn.Parameter) -> None:
    bound = method()
    if bound is not None:  # an optimizer that is gone no longer collects gradients
        bound(param)
