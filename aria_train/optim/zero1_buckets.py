"""The bucket layout of the ZeRO-1 optimizer (aria_train.optim.zero1): which parameters share a
bucket, where each sits in the flat buffers, and which slice of each bucket this rank owns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from aria_train.optim.flat_state import ParamInfo
from aria_train.parallel.groups import ParallelGroups

PAD_ELEMENTS = 16  # every shard is a multiple of this many elements (aligned starts on GPU)


@dataclass
class Entry:
    info: ParamInfo
    start: int  # offset inside the bucket
    numel: int


@dataclass
class Bucket:
    index: int  # launch order
    kind: str  # "dense" | "expert"
    dtype: torch.dtype  # of the parameters (bf16 in the bf16 layout)
    grad_dtype: torch.dtype  # of the gradient buffer: fp32 main gradients for bf16 parameters
    group: Any
    group_size: int
    group_rank: int
    entries: list[Entry] = field(default_factory=list)
    numel: int = 0  # unpadded
    padded: int = 0
    buffer_offset: int = 0  # start inside the kind's flat buffers
    # set once the buffers exist
    param_flat: Optional[torch.Tensor] = None  # [padded] view of the parameter buffer
    grad_flat: Optional[torch.Tensor] = None  # [padded] view of the (main) gradient buffer
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


def group_for(groups: ParallelGroups, kind: str) -> tuple[Any, int, int]:
    """(process group, its size, this rank's index in it) that reduces and shards `kind`."""
    g = groups
    if not g.distributed:
        return None, 1, 0
    if kind == "dense":
        return g.world_group, g.world_size, g.rank
    return g.edp_group, g.edp_size, g.edp_rank

def main_grad_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """Gradients accumulate in fp32 (or wider): a bf16 parameter gets an fp32 main gradient."""
    return torch.promote_types(param_dtype, torch.float32)


def make_buckets(infos: list[ParamInfo], groups: ParallelGroups, bucket_bytes: int,
                 param_dtype: Optional[torch.dtype] = None) -> list[Bucket]:
    """Buckets of about bucket_bytes per (kind, dtype), parameters in reverse registration order,
    each padded to a multiple of (group size x PAD_ELEMENTS) elements. `param_dtype`: the dtype
    the parameters take (None = their own)."""
    open_buckets: dict[tuple[str, torch.dtype], Bucket] = {}
    closed: list[Bucket] = []
    for info in reversed(infos):
        kind = "expert" if info.is_expert else "dense"
        dtype = param_dtype or info.param.dtype
        key = (kind, dtype)
        bucket = open_buckets.get(key)
        if bucket is None:
            group, size, rank = group_for(groups, kind)
            bucket = open_buckets[key] = Bucket(-1, kind, dtype, main_grad_dtype(dtype), group, size, rank)
        numel = info.param.numel()
        bucket.entries.append(Entry(info, bucket.numel, numel))
        bucket.numel += numel
        if bucket.numel * dtype.itemsize >= bucket_bytes:
            closed.append(open_buckets.pop(key))
    closed.extend(open_buckets.values())
    for index, bucket in enumerate(closed):
        bucket.index = index
        multiple = bucket.group_size * PAD_ELEMENTS
        bucket.padded = math.ceil(bucket.numel / multiple) * multiple
    return closed

@torch.no_grad()
def allocate_buffers(buckets_in_order: list[Bucket]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One flat parameter and one flat (main) gradient buffer per (kind, dtype); every parameter
    becomes a view of its bucket's slice, in the bucket's dtype; each bucket gets its fp32 master
    shard, taken from the parameters' values before any cast to a lower precision, and AdamW
    moments. Returns (parameter buffers, gradient buffers)."""
    by_key: dict[tuple[str, torch.dtype], list[Bucket]] = {}
    for bucket in buckets_in_order:
        by_key.setdefault((bucket.kind, bucket.dtype), []).append(bucket)
    param_buffers, grad_buffers = [], []
    for (kind, dtype), buckets in by_key.items():
        device = buckets[0].entries[0].info.param.device
        total = 0
        for bucket in buckets:
            bucket.buffer_offset = total
            total += bucket.padded
        param_buffer = torch.zeros(total, dtype=dtype, device=device)
        grad_buffer = torch.zeros(total, dtype=buckets[0].grad_dtype, device=device)
        param_buffers.append(param_buffer)
        grad_buffers.append(grad_buffer)
        for bucket in buckets:
            lo, hi = bucket.buffer_offset, bucket.buffer_offset + bucket.padded
            bucket.param_flat, bucket.grad_flat = param_buffer[lo:hi], grad_buffer[lo:hi]
            values = torch.zeros(bucket.padded, dtype=torch.float32, device=device)  # before any cast
            for entry in bucket.entries:
                param = entry.info.param
                values[entry.start : entry.start + entry.numel].copy_(param.data.reshape(-1))
                view = bucket.param_flat[entry.start : entry.start + entry.numel].view_as(param)
                view.copy_(param.data)
                param.data = view
            s0, size = bucket.shard_start, bucket.shard_size
            bucket.master = values[s0 : s0 + size].clone()
            bucket.exp_avg = torch.zeros(size, dtype=torch.float32, device=device)
            bucket.exp_avg_sq = torch.zeros(size, dtype=torch.float32, device=device)
            if bucket.group_size > 1:
                bucket.grad_shard = torch.zeros(size, dtype=bucket.grad_dtype, device=device)
            else:
                bucket.grad_shard = bucket.grad_flat  # nothing to reduce: the buffer is the shard
            bucket.segments = shard_segments(bucket)
    return param_buffers, grad_buffers

def shard_segments(bucket: Bucket) -> list:
    """(start, end, weight_decay, lr_scale) ranges of the bucket's shard, merged where the
    options agree."""
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
