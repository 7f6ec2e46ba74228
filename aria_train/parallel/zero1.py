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

Step protocol (see aria_train.optim.base):
  zero_grad -> for each micro-batch: begin_microbatch(is_last); forward; backward ->
  finish_grad_sync -> step(lr)
During the last micro-batch's backward a post-accumulate-grad hook counts the parameters of each
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

State dict: the "aria-flat-v1" format documented in aria_train.optim.build.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

from aria_train.config.schema import OptimizerConfig
from aria_train.optim.build import (
    STATE_FORMAT,
    FlatShard,
    ParamInfo,
    ParamRule,
    check_format,
    clip_coefficient,
    collect_params,
    copy_overlap,
)

PAD_ELEMENTS = 16  # every shard is a multiple of this many elements (aligned starts on GPU)

_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


@dataclass
class _Entry:
    info: ParamInfo
    start: int  # offset inside the bucket
    numel: int


@dataclass
class _Bucket:
    index: int  # launch order
    kind: str  # "dense" | "expert"
    dtype: torch.dtype
    group: Any
    group_size: int
    group_rank: int
    entries: list[_Entry] = field(default_factory=list)
    numel: int = 0  # unpadded
    padded: int = 0
    buffer_offset: int = 0  # start inside the kind's flat buffers
    # set once the buffers exist
    param_flat: Optional[torch.Tensor] = None  # [padded] view of the parameter buffer
    grad_flat: Optional[torch.Tensor] = None  # [padded] view of the gradient buffer
    grad_shard: Optional[torch.Tensor] = None  # [S] reduced gradient of this rank's shard
    master: Optional[torch.Tensor] = None  # [S] fp32
    exp_avg: Optional[torch.Tensor] = None
    exp_avg_sq: Optional[torch.Tensor] = None
    # (start, end, weight_decay, lr_scale) ranges of the shard, merged where options agree
    segments: list = field(default_factory=list)
    pending: int = 0
    launched: bool = False
    work: Any = None

    @property
    def shard_size(self) -> int:
        return self.padded // self.group_size

    @property
    def shard_start(self) -> int:
        return self.group_rank * self.shard_size


class Zero1Optimizer:
    def __init__(
        self,
        model: nn.Module,
        opt_cfg: OptimizerConfig,
        groups: Any,
        bucket_size_mb: float = 4.0,
        param_rule: Optional[ParamRule] = None,
    ):
        self.cfg = opt_cfg
        self.groups = groups
        self.distributed = bool(groups.distributed)
        self.infos = collect_params(model, opt_cfg, groups.ep_size, param_rule)
        self.step_count = 0
        self._is_last = False
        self._next_launch = 0
        self._synced = False
        self.buckets = self._make_buckets(max(1, int(bucket_size_mb * 2**20)))
        self._allocate()
        self._bucket_of: dict[int, tuple[_Bucket, _Entry]] = {}
        for bucket in self.buckets:
            for entry in bucket.entries:
                self._bucket_of[id(entry.info.param)] = (bucket, entry)
        self._hooks = [
            info.param.register_post_accumulate_grad_hook(self._on_grad_ready) for info in self.infos
        ]
        self.zero_grad()

    # -- layout -----------------------------------------------------------------------------------
    def _group_for(self, kind: str) -> tuple[Any, int, int]:
        g = self.groups
        if not self.distributed:
            return None, 1, 0
        if kind == "dense":
            return g.world_group, g.world_size, g.rank
        return g.edp_group, g.edp_size, g.edp_rank

    def _make_buckets(self, bucket_bytes: int) -> list[_Bucket]:
        open_buckets: dict[tuple[str, torch.dtype], _Bucket] = {}
        closed: list[_Bucket] = []
        for info in reversed(self.infos):
            kind = "expert" if info.is_expert else "dense"
            key = (kind, info.param.dtype)
            bucket = open_buckets.get(key)
            if bucket is None:
                group, size, rank = self._group_for(kind)
                bucket = open_buckets[key] = _Bucket(-1, kind, info.param.dtype, group, size, rank)
            numel = info.param.numel()
            bucket.entries.append(_Entry(info, bucket.numel, numel))
            bucket.numel += numel
            if bucket.numel * info.param.element_size() >= bucket_bytes:
                closed.append(open_buckets.pop(key))
        closed.extend(open_buckets.values())
        for index, bucket in enumerate(closed):
            bucket.index = index
            multiple = bucket.group_size * PAD_ELEMENTS
            bucket.padded = math.ceil(bucket.numel / multiple) * multiple
        return closed

    @torch.no_grad()
    def _allocate(self) -> None:
        by_key: dict[tuple[str, torch.dtype], list[_Bucket]] = {}
        for bucket in self.buckets:
            by_key.setdefault((bucket.kind, bucket.dtype), []).append(bucket)
        self._param_buffers, self._grad_buffers = [], []
        for (kind, dtype), buckets in by_key.items():
            device = buckets[0].entries[0].info.param.device
            total = 0
            for bucket in buckets:
                bucket.buffer_offset = total
                total += bucket.padded
            param_buffer = torch.zeros(total, dtype=dtype, device=device)
            grad_buffer = torch.zeros(total, dtype=dtype, device=device)
            self._param_buffers.append(param_buffer)
            self._grad_buffers.append(grad_buffer)
            for bucket in buckets:
                lo, hi = bucket.buffer_offset, bucket.buffer_offset + bucket.padded
                bucket.param_flat, bucket.grad_flat = param_buffer[lo:hi], grad_buffer[lo:hi]
                for entry in bucket.entries:
                    param = entry.info.param
                    view = bucket.param_flat[entry.start : entry.start + entry.numel].view_as(param)
                    view.copy_(param.data)
                    param.data = view
                s0, size = bucket.shard_start, bucket.shard_size
                bucket.master = bucket.param_flat[s0 : s0 + size].to(torch.float32, copy=True)
                bucket.exp_avg = torch.zeros(size, dtype=torch.float32, device=device)
                bucket.exp_avg_sq = torch.zeros(size, dtype=torch.float32, device=device)
                if bucket.group_size > 1:
                    bucket.grad_shard = torch.zeros(size, dtype=dtype, device=device)
                else:
                    bucket.grad_shard = bucket.grad_flat  # nothing to reduce: the buffer is the shard
                bucket.segments = self._segments(bucket)

    @staticmethod
    def _segments(bucket: _Bucket) -> list:
        s0, s1 = bucket.shard_start, bucket.shard_start + bucket.shard_size
        segments: list = []
        for entry in bucket.entries:
            lo, hi = max(s0, entry.start), min(s1, entry.start + entry.numel)
            if hi <= lo:
                continue
            opts = (entry.info.weight_decay, entry.info.lr_scale)
            if segments and segments[-1][1] == lo - s0 and segments[-1][2:] == opts:
                segments[-1] = (segments[-1][0], hi - s0) + opts
            else:
                segments.append((lo - s0, hi - s0) + opts)
        return segments

    def _grad_view(self, bucket: _Bucket, entry: _Entry) -> torch.Tensor:
        return bucket.grad_flat[entry.start : entry.start + entry.numel].view_as(entry.info.param)

    # -- gradients --------------------------------------------------------------------------------
    @torch.no_grad()
    def _on_grad_ready(self, param: nn.Parameter) -> None:
        bucket, entry = self._bucket_of[id(param)]
        view = self._grad_view(bucket, entry)
        grad = param.grad
        if grad is not None and grad.data_ptr() != view.data_ptr():
            # someone replaced .grad (set to None, or an out-of-place accumulation): the new
            # tensor is the whole accumulated gradient
            view.copy_(grad)
        param.grad = view
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
            for entry in bucket.entries:
                entry.info.param.grad = self._grad_view(bucket, entry)
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
        with torch.no_grad():
            for bucket in self.buckets:
                if bucket.launched:
                    continue
                for entry in bucket.entries:
                    grad = entry.info.param.grad
                    view = self._grad_view(bucket, entry)
                    if grad is not None and grad.data_ptr() != view.data_ptr():
                        view.copy_(grad)
                    entry.info.param.grad = view
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
        """Fills this rank's shards from `state` (any layout of FlatShards; see optim.build), then
        writes the loaded master weights into the parameters (all-gather)."""
        check_format(state)
        for info, bucket, lo, hi, offset in self._pieces():
            if info.name not in state["state"]:
                raise KeyError(f"optimizer state has no entry for parameter {info.name}")
            per_state = state["state"][info.name]
            for key in ("master", "exp_avg", "exp_avg_sq"):
                dest = getattr(bucket, key)[lo:hi]
                copied = copy_overlap(dest, offset, per_state[key])
                if copied != hi - lo:
                    raise ValueError(f"optimizer state {info.name}.{key} covers {copied} of {hi - lo} elements")
        self.step_count = int(state["step"])
        self._gather_params()

    def state_dict(self) -> dict:
        return self.sharded_state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.load_sharded_state_dict(state)

    @torch.no_grad()
    def reload_master_from_params(self) -> None:
        """After loading model weights without optimizer state: master shards := parameters."""
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
