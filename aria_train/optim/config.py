"""Configuration of the optimizer (`optimizer.*`)."""

from dataclasses import dataclass


@dataclass
class OptimizerConfig:
    lr: float = 3e-3
    min_lr: float = 3e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip_grad: float = 1.0  # <= 0: no clipping
    zero1: bool = True  # shard optimizer state over data-parallel ranks
