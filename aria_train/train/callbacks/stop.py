"""When a run stops, and the record of why.

NonFiniteGuard: a step whose loss or gradient norm is NaN/Inf was skipped by the optimizer;
`train.max_nonfinite_steps` of them in a row abort the run (no save: the last good checkpoint
stays). StopOnRequest: a preemption signal or the wall-time budget (agreed by all ranks,
aria_train.train.stopping) or `train.exit_interval` ends the run cleanly after this step's
checkpoint. ExitStatus: rank 0 leaves LOG_DIR/exit_status = "<reason> <step>" for job chaining
(launch/slurm/run_job.sh); it runs last.
"""

from __future__ import annotations

from typing import Optional

from aria_train.train.callbacks.callback import AbortTraining, Callback
from aria_train.train.stopping import StopController


class NonFiniteGuard(Callback):
    def __init__(self, max_nonfinite_steps: int):
        self.max_nonfinite_steps = max_nonfinite_steps
        self.streak = 0

    def post_step(self, trainer, metrics: dict) -> None:
        if not metrics["skipped"]:
            self.streak = 0
            return
        self.streak += 1
        step = trainer.state.step
        trainer.logger.info(f"step {step}: non-finite loss or gradient norm, update skipped "
                            f"({self.streak} in a row, {trainer.state.skipped_steps} in all)")
        if self.streak >= self.max_nonfinite_steps:
            raise AbortTraining("nonfinite", (
                f"{self.streak} consecutive non-finite steps up to step {step} "
                f"(train.max_nonfinite_steps={self.max_nonfinite_steps}); stopping without "
                f"saving (the last good checkpoint is kept)"))


class StopOnRequest(Callback):
    def __init__(self, stopper: StopController, exit_interval: Optional[int]):
        self.stopper = stopper
        self.exit_interval = exit_interval

    def post_step(self, trainer, metrics: dict) -> None:
        trainer.activity = "stop agreement all_reduce"
        reason = self.stopper.agreed_reason(trainer.groups)
        if self.exit_interval is not None and trainer.state.step >= self.exit_interval:
            reason = reason or "exit-interval"
        if reason:
            trainer.stop_reason = reason

    def post_train(self, trainer, exit_reason: str) -> None:
        self.stopper.restore()


class ExitStatus(Callback):
    def post_train(self, trainer, exit_reason: str) -> None:
        trainer.logger.write_exit_status(exit_reason, trainer.state.step)
