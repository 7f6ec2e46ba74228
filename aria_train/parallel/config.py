"""Configuration of the parallel layout (`parallel.*`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from aria_train.config import ConfigError


@dataclass
class ParallelConfig:
    ep_size: int = 1  # expert-parallel group size (consecutive ranks); see aria_train.moe.layout
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto = nccl on CUDA, gloo on CPU
    bucket_size_mb: float = 4.0  # gradient reduce-scatter bucket size
    timeout_minutes: float = 10.0
    # The smallest world size the layout (ep_size, recompute modes, micro-batch) fits an 80 GB GPU
    # at, by the dry-run's accounting; a recipe states it, `--dry-run` accounts for it by default.
    min_world_size: Optional[int] = None


def check_ep_divides_world(ep_size: int, world_size: int, world: str = "the world size") -> None:
    """EP groups are blocks of ep_size consecutive ranks: they must tile the world."""
    if ep_size < 1 or world_size % ep_size != 0:
        raise ConfigError(f"parallel.ep_size={ep_size} does not divide {world} {world_size}")
