"""Splits a step's wall time into data, forward, backward, gradient-sync wait and optimizer (plus
`other`: what no phase covers, such as the loss all-reduce), and reads the peak memory. On CUDA
each phase boundary synchronises, so the split is the device's.

    timer.reset()                      # the step starts
    with timer.phase("forward"): ...   # phases may repeat (micro-batches); times add up
    timer.summary()                    # time_<phase>_s, time_other_s, step_time_s, peak_memory_gib

step_time_s is the wall time from reset() to summary(); the phases and time_other_s add up to it.
`current` names the phase running now; it stays set when a phase raised, so an error (a collective
timeout, say) can say where it happened.
"""

import contextlib
import resource
import time
from collections import defaultdict
from typing import Optional

import torch


class StepTimer:
    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.current: Optional[str] = None
        self._start = time.perf_counter()

    def reset(self) -> None:
        self.seconds.clear()
        self.current = None
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._sync()
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str):
        self._sync()
        outer, self.current = self.current, name
        start = time.perf_counter()
        yield
        # Not in a `finally`: when the phase raises, `current` keeps its name for the error.
        self._sync()
        self.seconds[name] += time.perf_counter() - start
        self.current = outer

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def summary(self) -> dict:
        self._sync()
        total = time.perf_counter() - self._start
        out = {f"time_{name}_s": value for name, value in self.seconds.items()}
        out["time_other_s"] = max(total - sum(self.seconds.values()), 0.0)
        out["step_time_s"] = total
        out["peak_memory_gib"] = self.peak_memory_bytes() / 2**30
        return out

    def peak_memory_bytes(self) -> float:
        """CUDA: peak allocated in this step. CPU: the process's peak resident set (whole run)."""
        if self.device.type == "cuda":
            return float(torch.cuda.max_memory_allocated(self.device))
        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux: KiB
