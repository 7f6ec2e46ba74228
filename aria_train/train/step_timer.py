"""Splits step time into data, forward, backward, gradient-sync wait and optimizer (plus `other`:
what no phase covers, such as the loss all-reduce), and reads the peak memory, without
synchronising the device.

    timer.reset()                      # a step starts
    with timer.phase("forward"): ...   # phases may repeat (micro-batches); times add up
    timer.summary()                    # the step: step_time_s, peak_memory_gib
    timer.window_summary()             # at a log step: the mean split of the steps since the last

step_time_s is the host's wall time from reset() to summary(). On CPU a phase is timed by the
host clock (the work is synchronous). On CUDA the host runs ahead of the device, so each phase
records a pair of CUDA events instead; they are read once per log window (window_summary
waits for the last one), never at a phase boundary: a torch.cuda.synchronize() per phase would
stall the launch queue several times per step. The window's split is the device's, as mean
seconds per step, and time_other_s is the mean step time minus the phases.
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
        self.current: Optional[str] = None
        self._start = time.perf_counter()
        self._window_seconds: dict[str, float] = defaultdict(float)  # host-timed phases (CPU)
        self._window_events: list[tuple[str, object, object]] = []  # (phase, start, end) CUDA events
        self._window_steps = 0
        self._window_step_time = 0.0

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def reset(self) -> None:
        self.current = None
        if self.on_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str):
        outer, self.current = self.current, name
        if self.on_cuda:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            start = time.perf_counter()
        yield
        # Not in a `finally`: when the phase raises, `current` keeps its name for the error.
        if self.on_cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._window_events.append((name, start, end))
        else:
            self._window_seconds[name] += time.perf_counter() - start
        self.current = outer

    def summary(self) -> dict:
        """The step just finished: its wall time and peak memory (no device synchronisation)."""
        total = time.perf_counter() - self._start
        self._window_steps += 1
        self._window_step_time += total
        return {"step_time_s": total, "peak_memory_gib": self.peak_memory_bytes() / 2**30}

    def window_summary(self) -> dict:
        """Mean seconds per step of each phase since the last call (CUDA: one wait for the last
        event), time_other_s and the mean step_time_s; then a new window starts."""
        seconds = defaultdict(float, self._window_seconds)
        if self._window_events:
            self._window_events[-1][2].synchronize()
            for name, start, end in self._window_events:
                seconds[name] += start.elapsed_time(end) / 1000.0
        steps = max(self._window_steps, 1)
        out = {f"time_{name}_s": value / steps for name, value in seconds.items()}
        step_time = self._window_step_time / steps
        out["time_other_s"] = max(step_time - sum(seconds.values()) / steps, 0.0)
        out["step_time_s"] = step_time
        self._window_seconds.clear()
        self._window_events.clear()
        self._window_steps, self._window_step_time = 0, 0.0
        return out

    def peak_memory_bytes(self) -> float:
        """CUDA: peak allocated in this step. CPU: the process's peak resident set (whole run)."""
        if self.on_cuda:
            return float(torch.cuda.max_memory_allocated(self.device))
        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux: KiB
