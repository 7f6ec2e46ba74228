"""The trainer's callbacks: the hook surface (callback.py) and the policies built on it."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from aria_train.checkpoint import Checkpointer
from aria_train.train.callbacks.callback import AbortTraining, Callback
from aria_train.train.callbacks.checkpointing import CheckpointSave
from aria_train.train.callbacks.evaluation import Evaluation
from aria_train.train.callbacks.logging import MetricsWindow
from aria_train.train.callbacks.stop import ExitStatus, NonFiniteGuard, StopOnRequest
from aria_train.train.stopping import StopController


def default_callbacks(
    cfg,
    device: torch.device,
    checkpointer: Optional[Checkpointer] = None,
    stopper: Optional[StopController] = None,
    valid_batches_factory: Optional[Callable[[], object]] = None,
) -> list[Callback]:
    """A run's callbacks, in the order their hooks run: the non-finite guard (which may abort
    before anything is logged or saved), metrics, validation, stop requests, the checkpoint
    (which saves when a stop was requested), and the exit status (written last)."""
    callbacks: list[Callback] = [
        NonFiniteGuard(cfg.train.max_nonfinite_steps),
        MetricsWindow(cfg, device),
        Evaluation(cfg, valid_batches_factory),
        StopOnRequest(stopper or StopController(cfg.train, device), cfg.train.exit_interval),
    ]
    if checkpointer is not None:
        callbacks.append(CheckpointSave(cfg, checkpointer))
    callbacks.append(ExitStatus())
    return callbacks


__all__ = ["AbortTraining", "Callback", "CheckpointSave", "Evaluation", "ExitStatus", "MetricsWindow",
           "NonFiniteGuard", "StopOnRequest", "default_callbacks"]
