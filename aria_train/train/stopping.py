"""When a run should stop early and cleanly: a preemption signal or a wall-time budget.

A signal handler only sets a flag; at the end of every step the ranks agree (all-reduce MAX),
so they all save the same step and exit together even when the signal reached only some of
them (SLURM signals every task, a user's `kill` may reach one).

The wall-time budget counts from the start of the process (as Megatron's --exit-duration-in-mins
does), so start-up (data index, model build, checkpoint load) is inside it. launch/pretrain.py
installs the handlers before start-up too, so a SLURM warning that arrives while the data index
builds stops the run after its first step instead of killing it.
"""

import os
import signal
import time
from typing import Optional

import torch
import torch.distributed as dist

from aria_train.parallel.groups import ParallelGroups
from aria_train.train.config import TrainConfig

REASONS = {1: "signal", 2: "exit-duration"}


class StopController:
    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.device = device
        self.start = time.monotonic() - _process_age_s()
        self.duration_s = cfg.exit_duration_mins * 60 if cfg.exit_duration_mins else None
        self.received: Optional[str] = None
        self._previous = {}
        for name in cfg.exit_signals:
            signum = getattr(signal, name)
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def agreed_reason(self, groups: ParallelGroups) -> Optional[str]:
        """Collective over the world of `groups`: every rank must call it at the same step."""
        code = 0
        if self.received is not None:
            code = 1
        elif self.duration_s is not None and time.monotonic() - self.start >= self.duration_s:
            code = 2
        flag = torch.tensor([code], dtype=torch.int32,
                            device=self.device if self.device.type == "cuda" else "cpu")
        if groups.distributed:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=groups.world_group)
        return REASONS.get(int(flag.item()))

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _process_age_s() -> float:
    """Seconds since this process started (Linux /proc); 0 where that cannot be read."""
    try:
        start_ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        uptime = float(open("/proc/uptime").read().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return 0.0
