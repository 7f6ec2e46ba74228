"""A gloo world of spawned processes on loopback, for multi-rank tests.

Test modules run under pytest's importlib mode, so spawned children cannot import them: the
functions a child runs live in helper modules whose directories the tests put on sys.path (spawn
passes sys.path on to the children).
"""

from __future__ import annotations

import datetime
import gc
import socket
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        fn(rank, world, *args)
        dist.barrier()  # nobody tears down its connections while a peer is still receiving
    except Exception:
        traceback.print_exc()
        raise
    finally:
        # gc before and after: see aria_train.parallel.distributed.shutdown (a group still
        # referenced from a cycle keeps its gloo threads alive into interpreter exit -> SIGABRT)
        gc.collect()
        dist.destroy_process_group()
        gc.collect()


def run_world(fn, world: int, *args) -> None:
    """Runs fn(rank, world, *args) on `world` gloo ranks; a failure on any rank fails the call."""
    mp.spawn(_entry, args=(world, free_port(), fn, args), nprocs=world, join=True)
