"""Stage 0's callbacks: the trainer's stop, non-finite, checkpoint and exit-status policies as
they are, plus a metrics window that reports each (dataset, objective) pair, and the held-out
evaluation (zero-shot classification and retrieval, aria_train.train.encoder.evaluation)."""

from __future__ import annotations

from collections import defaultdict
from typing import Optional

import torch

from aria_train.checkpoint import Checkpointer
from aria_train.train.callbacks import CheckpointSave, ExitStatus, NonFiniteGuard, StopOnRequest
from aria_train.train.callbacks.callback import Callback
from aria_train.train.callbacks.logging import MetricsWindow
from aria_train.train.encoder.evaluation import evaluate_encoder
from aria_train.train.stopping import StopController


class PairMetricsWindow(MetricsWindow):
    """The first step of the run (step 1, or the first after a resume), every
    `logging.log_interval` steps and the last step: the step's metrics with step N/total, elapsed
    time and ETA, each pair's mean loss over the window's steps on it (`loss/<pair>`), the steps
    taken on each pair so far (`pair_steps`, from the data state: a resumed run counts on), and
    samples per second. pre_train (MetricsWindow's) opens the run's metrics.jsonl at the step it
    starts from."""

    def _reset(self) -> None:
        self.seconds, self.samples = 0.0, 0
        self.losses: dict[str, list] = defaultdict(list)

    def post_step(self, trainer, metrics: dict) -> None:
        step = trainer.state.step
        self.seconds += metrics["step_time_s"]
        self.samples += metrics["global_samples"]
        self.losses[metrics["pair"]].append(metrics["loss"])
        if not self._due(step):
            return
        record = dict(metrics)
        for name, values in self.losses.items():
            record[f"loss/{name}"] = sum(values) / len(values)
        record["samples_per_s"] = self.samples / max(self.seconds, 1e-9)
        record["skipped_steps"] = trainer.state.skipped_steps
        record.update(self._progress(step))
        record["console_extras"] = f"pair {metrics['pair']} | " + " ".join(
            f"{name} {record[f'loss/{name}']:.3f} ({metrics['pair_steps'][name]})" for name in metrics["pair_steps"]
            if f"loss/{name}" in record) + f" | scale {metrics['logit_scale']:.1f} | {record['samples_per_s']:.0f} samples/s"
        trainer.logger.log(record)
        self._reset()


class HeldOutEvaluation(Callback):
    """Every `train.eval_interval` steps and at the last step: held-out zero-shot accuracy,
    classifier accuracy and retrieval recall, logged with the step."""

    def __init__(self, cfg, data):
        self.cfg = cfg
        self.data = data

    def post_step(self, trainer, metrics: dict) -> None:
        interval, step = self.cfg.train.eval_interval, trainer.state.step
        if not ((interval and step % interval == 0) or step == self.cfg.train.train_iters):
            return
        trainer.activity = "held-out evaluation"
        results = evaluate_encoder(trainer.model, self.data, self.cfg.encoder.text.max_length,
                                   self.cfg.encoder.eval_batch_size, trainer.device)
        if results:
            extras = " ".join(f"{k} {v:.3f}" for k, v in results.items())
            trainer.logger.log({"step": step, "eval": results, "console_extras": f"held-out: {extras}"})


def encoder_callbacks(cfg, device: torch.device, data, checkpointer: Optional[Checkpointer] = None,
                      stopper: Optional[StopController] = None) -> list[Callback]:
    """Stage 0's callbacks, in the order default_callbacks runs its own."""
    callbacks: list[Callback] = [
        NonFiniteGuard(cfg.train.max_nonfinite_steps),
        PairMetricsWindow(cfg, device),
        HeldOutEvaluation(cfg, data),
        StopOnRequest(stopper or StopController(cfg.train, device), cfg.train.exit_interval),
    ]
    if checkpointer is not None:
        callbacks.append(CheckpointSave(cfg, checkpointer))
    callbacks.append(ExitStatus())
    return callbacks
