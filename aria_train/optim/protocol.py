"""The one interface the trainer and the checkpointer drive an optimizer through.

Gradient convention: each rank's loss is already scaled so that the SUM of the local losses over
all ranks is the global loss (see aria_train.train.loss). Gradients are therefore summed, not
averaged: dense parameters over the whole world, routed-expert parameters over their
expert-data-parallel group (which, with the all-to-all, also counts every rank of their EP group).

Step protocol:
    zero_grad -> for each micro-batch: begin_microbatch(is_last); forward; backward ->
    finish_grad_sync -> step(lr)

Two implementations: ReplicatedAdamW (aria_train.optim.replicated: every rank holds the full
state; all-reduce) and Zero1Optimizer (aria_train.optim.zero1: state sharded, reduce-scatter
per bucket during backward). Both speak the "aria-flat-v1" state format of
aria_train.optim.flat_state.
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

    def sharded_state_dict(self) -> dict:
        """This rank's state in the "aria-flat-v1" format; the tensors are views of the live
        state (a load into them writes the state in place)."""

    def load_sharded_state_dict(self, state: dict) -> None:
        """Copies from `state` (FlatShards at any offsets) every range this rank holds, then
        writes the master weights into the model's parameters and sets the step."""

    def reset_from_model(self) -> None:
        """The model's weights were replaced (a weights-only checkpoint load): they become the
        master weights; moments and step stay as they are (fresh)."""

    def state_bytes(self) -> int:
        """Bytes of optimizer state (master weights, moments) held by this rank."""

    def close(self) -> None:
        """Releases what the optimizer registered on the model (gradient hooks)."""
