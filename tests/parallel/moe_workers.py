"""Spawned-rank bodies for tests/parallel/test_moe_ep_comm.py (expert-parallel communication of
one MoE layer: what crosses the all-to-all, and what the host reads back)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from host_reads import HostReads  # noqa: E402

from aria_train.moe.config import MoEConfig  # noqa: E402
from aria_train.moe.layer import MoELayer  # noqa: E402
from aria_train.parallel.expert_parallel import apply_expert_parallel  # noqa: E402
from aria_train.parallel.groups import init_parallel_groups  # noqa: E402

H, TOKENS = 32, 24
MOE = MoEConfig(num_experts=8, top_k=2, expert_ffn_size=16, balance_group_size=4)


def ep_layer(ep_size: int) -> nn.Module:
    """One MoE layer with the same seeded weights on every rank, then sliced to this rank's experts."""
    holder = nn.Module()
    holder.moe = MoELayer(H, MOE)
    with torch.no_grad():
        for name, p in holder.named_parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name) * 1000 + p.numel())))
    apply_expert_parallel(holder, init_parallel_groups(ep_size))
    return holder.moe


def layer_step(layer: MoELayer, rank: int, autocast: bool) -> MoELayer:
    x = torch.randn(TOKENS, H, generator=torch.Generator().manual_seed(100 + rank)).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = layer(x)
        loss = out.hidden.float().square().sum() + out.balance_loss + out.z_loss
    loss.backward()
    return out


def host_reads_worker(rank: int, world: int, out_dir: str) -> None:
    layer = ep_layer(world)
    layer_step(layer, rank, autocast=False)  # warm-up: one-time probes are not per step
    with HostReads() as reads:
        layer_step(layer, rank, autocast=False)
    Path(out_dir, f"reads_{rank}.json").write_text(json.dumps(reads.events))


def row_bytes_worker(rank: int, world: int, out_dir: str) -> None:
    """Every floating-point all_to_all of a layer's forward + backward under bf16 autocast:
    (dtype, rows, bytes sent)."""
    layer = ep_layer(world)
    sent = []
    real = dist.all_to_all_single

    def counting(output, input, *args, **kwargs):
        if input.is_floating_point():
            sent.append((str(input.dtype), input.shape[0], input.numel() * input.element_size()))
        return real(output, input, *args, **kwargs)

    dist.all_to_all_single = counting
    try:
        layer_step(layer, rank, autocast=True)
    finally:
        dist.all_to_all_single = real
    Path(out_dir, f"sent_{rank}.json").write_text(json.dumps({"sent": sent, "routed_rows": TOKENS * MOE.top_k}))
