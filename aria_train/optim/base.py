"""The small interface the trainer drives an optimizer through.

Gradient convention: each rank's loss is already normalised so that the SUM of the local losses
over all ranks is the global loss (see aria_train.train.loss). Gradients are therefore summed,
not averaged: dense parameters over the whole world, routed-expert parameters over their
expert-data-parallel group (which, with the all-to-all, also counts every rank of their EP group).

Two implementations: ReplicatedAdamW (every rank holds the full optimizer state; all-reduce)
and the ZeRO-1 distributed optimizer in aria_train.parallel.zero1.
"""

from typing import Protocol


class TrainOptimizer(Protocol):
    def zero_grad(self) -> None:
        """Clears gradients before the first micro-batch of a step."""

    def begin_microbatch(self, is_last: bool) -> None:
        """Called before each micro-batch's backward: gradient communication may start only
        during the last one, when the accumulated gradients are final."""

    def finish_grad_sync(self) -> None:
        """Waits until every gradient of the step is reduced."""

    def step(self, lr: float) -> float:
        """Clips to the configured norm and applies AdamW at `lr`. Returns the global gradient norm
        before clipping, every parameter counted once. A non-finite norm skips the update."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def state_bytes(self) -> int:
        """Bytes of optimizer state (master weights, moments) held by this rank."""
