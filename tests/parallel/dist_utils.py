"""Helpers for the multi-rank tests: spawn a gloo world on loopback, a tiny model, the loss.

Test modules run under pytest's importlib mode, so spawned children cannot import them; every
function a child runs lives here (tests add this directory to sys.path, which spawn passes on).
"""

from __future__ import annotations

import datetime
import socket
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from aria_train.config.schema import ModelConfig, MoEConfig
from aria_train.config.presets import MODEL_PRESETS


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        fn(rank, world, *args)
        dist.barrier()  # nobody tears down its connections while a peer is still receiving
    except Exception:
        traceback.print_exc()
        raise
    finally:
        dist.destroy_process_group()


def run_world(fn, world: int, *args) -> None:
    """Runs fn(rank, world, *args) on `world` gloo ranks; a failure on any rank fails the call."""
    mp.spawn(_entry, args=(world, free_port(), fn, args), nprocs=world, join=True)


def tiny_config(**moe_overrides) -> ModelConfig:
    preset = dict(MODEL_PRESETS["tiny"])
    moe = MoEConfig(**{**preset.pop("moe"), **moe_overrides})
    return ModelConfig(preset="tiny", **preset, moe=moe)


def micro_loss(model, tokens, labels, global_tokens: int, world: int, n_micro: int) -> torch.Tensor:
    """The trainer's convention: sum of local CE / global token count + (balance + z) / (world x
    micro-batches), so the SUM over ranks and micro-batches is the global loss."""
    out = model(tokens)
    logits = model.logits(out.hidden).float()
    ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")
    return ce / global_tokens + (out.balance_loss + out.z_loss) / (world * n_micro)


def make_batches(steps: int, world: int, n_micro: int, batch: int, seq: int, vocab: int, seed: int = 7):
    """batches[step][rank][micro] = (tokens, labels), the same on every process."""
    g = torch.Generator().manual_seed(seed)
    return [
        [
            [
                (torch.randint(0, vocab, (batch, seq), generator=g), torch.randint(0, vocab, (batch, seq), generator=g))
                for _ in range(n_micro)
            ]
            for _ in range(world)
        ]
        for _ in range(steps)
    ]
