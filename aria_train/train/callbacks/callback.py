"""The hooks a trainer calls around its loop (after OLMo-core's trainer callbacks).

    pre_train(trainer)                  before the first step (after any resume)
    post_step(trainer, metrics)         after each step: its update is done, trainer.state counts
                                        it, `metrics` is the step's dict (loss, grad norm, timing)
    post_train(trainer, exit_reason)    always, last: finished | signal | exit-duration |
                                        exit-interval | nonfinite | error

Every rank calls every hook at the same point, so hooks may run collectives. A hook stops the
run cleanly by setting `trainer.stop_reason` (the loop ends after this step's hooks), or aborts it
by raising AbortTraining (the exit reason it carries is reported, then the error propagates).
Hooks set `trainer.activity` before a collective, so a timeout names what was running.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aria_train.errors import UserError

if TYPE_CHECKING:  # the trainer imports this module
    from aria_train.train.trainer import Trainer


class AbortTraining(UserError):
    """Stops the run with an error the user can act on, after the post_train hooks ran."""

    def __init__(self, exit_reason: str, message: str):
        super().__init__(message)
        self.exit_reason = exit_reason


class Callback:
    """A no-op for every hook; subclasses override what they need."""

    def pre_train(self, trainer: "Trainer") -> None:
        pass

    def post_step(self, trainer: "Trainer", metrics: dict) -> None:
        pass

    def post_train(self, trainer: "Trainer", exit_reason: str) -> None:
        pass
