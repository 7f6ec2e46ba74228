"""A finished run leaves no gloo worker thread behind (tests/parallel/workers.shutdown_worker)."""

import os
import sys

import pytest
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import workers  # noqa: E402
from spawn_world import free_port  # noqa: E402


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through Linux /proc")
def test_shutdown_joins_gloo_threads_after_zero1_step():
    world = 2
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(workers.shutdown_worker, args=(world, free_port(), queue), nprocs=world, join=True)
    results = sorted(queue.get() for _ in range(world))
    for rank, running, left in results:
        assert running > 0, results  # the step did run on gloo threads
        assert left == 0, f"rank {rank}: {left} gloo work-loop threads still running after shutdown"
