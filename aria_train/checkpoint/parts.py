"""What a checkpoint is made of: the training parts a checkpointer saves and restores, and what it
records about the run that wrote it. The checkpointer sees these, never the trainer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol

from torch import nn

from aria_train.checkpoint.state import ProcessRNG
from aria_train.optim.protocol import TrainOptimizer


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class TrainingParts:
    """Everything a resumed run needs. The model and the optimizer are saved as tensors keyed by
    parameter and global expert (reshardable); the others as small serialised values."""

    model: nn.Module
    optimizer: TrainOptimizer
    train_state: Stateful  # {"step", "consumed_samples"} (aria_train.train.state.TrainState)
    data: Optional[Stateful] = None  # the training data iterator's position
    rng: Stateful = field(default_factory=ProcessRNG)  # this process's random generators


@dataclass
class RunDescription:
    """What a checkpoint records about the run that wrote it (metadata.json, config.yaml)."""

    config: dict  # the resolved run config, saved as config.yaml
    stage: int
    model_preset: str
    rope_base: float
    num_experts: int  # E, routed experts per layer
