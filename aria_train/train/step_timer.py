"""Splits a step's wall time into forward, backward, gradient-sync wait and optimizer, and reads
the peak memory. On CUDA each phase boundary synchronises, so the split is the device's."""

import contextlib
import resource
import time
from collections import defaultdict

import torch


class StepTimer:
    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    def reset(self) -> None:
        self.seconds.clear()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    @contextlib.contextmanager
    def phase(self, name: str):
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def summary(self) -> dict:
        out = {f"time_{name}_s": value for name, value in self.seconds.items()}
        out["step_time_s"] = sum(self.seconds.values())
        out["peak_memory_gib"] = self.peak_memory_bytes() / 2**30
        return out

    def peak_memory_bytes(self) -> float:
        if self.device.type == "cuda":
            return float(torch.cuda.max_memory_allocated(self.device))
        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux: KiB
