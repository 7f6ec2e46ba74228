"""Learning-rate schedules: linear warmup, then cosine, warmup-stable-decay, or constant."""

import math

from aria_train.optim.config import OptimizerConfig
from aria_train.train.config import ScheduleConfig


def learning_rate(step: int, train_iters: int, opt: OptimizerConfig, sched: ScheduleConfig) -> float:
    """LR for optimizer step `step` (0-based). Depends only on the step and the full run's
    length, so stopping and resuming (or --exit-interval) never changes it."""
    warmup = sched.warmup_iters
    if warmup > 0 and step < warmup:
        return opt.lr * (step + 1) / warmup
    if sched.style == "constant":
        return opt.lr
    decay_end = sched.decay_iters or train_iters
    if sched.style == "wsd":
        decay_start = max(warmup, int(decay_end * (1.0 - sched.wsd_decay_fraction)))
        if step < decay_start:
            return opt.lr
        progress = min(1.0, (step - decay_start) / max(1, decay_end - decay_start))
        return opt.lr - (opt.lr - opt.min_lr) * progress
    progress = min(1.0, (step - warmup) / max(1, decay_end - warmup))
    return opt.min_lr + 0.5 * (opt.lr - opt.min_lr) * (1.0 + math.cos(math.pi * progress))
