"""The save policy: a checkpoint every `checkpoint.save_interval` steps, at the last step and
when the run is asked to stop; the in-flight save is waited for at the end."""

from __future__ import annotations

from aria_train.checkpoint import Checkpointer
from aria_train.train.callbacks.callback import Callback


class CheckpointSave(Callback):
    def __init__(self, cfg, checkpointer: Checkpointer):
        self.cfg = cfg
        self.checkpointer = checkpointer

    def _due(self, step: int) -> bool:
        interval = self.cfg.checkpoint.save_interval
        last = step == self.cfg.train.train_iters
        return bool(self.cfg.checkpoint.save) and (bool(interval and step % interval == 0) or last)

    def post_step(self, trainer, metrics: dict) -> None:
        # No periodic save of a skipped (non-finite) step: a good checkpoint is not pruned for
        # it. A stop request still saves (the weights are the last good ones: skipped steps do
        # not update them).
        if trainer.stop_reason or (self._due(trainer.state.step) and not metrics["skipped"]):
            trainer.activity = "checkpoint save"
            self.checkpointer.save(trainer.parts)

    def post_train(self, trainer, exit_reason: str) -> None:
        if exit_reason != "error":
            trainer.activity = "checkpoint finalize"
            self.checkpointer.finalize()
