"""Validation loss every `train.eval_interval` steps: the token-mean LM loss over
`train.eval_iters` global batches of a fresh pass over the validation data."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from aria_train.parallel.distributed import all_reduce_sum
from aria_train.train.callbacks.callback import Callback


class Evaluation(Callback):
    def __init__(self, cfg, valid_batches_factory: Optional[Callable[[], object]]):
        self.cfg = cfg
        self.valid_batches_factory = valid_batches_factory

    def post_step(self, trainer, metrics: dict) -> None:
        interval, step = self.cfg.train.eval_interval, trainer.state.step
        if not (self.valid_batches_factory and interval and step % interval == 0):
            return
        trainer.activity = "validation"
        valid_loss = self.evaluate(trainer)
        trainer.logger.log({"step": step, "valid_loss": valid_loss,
                            "console_extras": f"validation loss {valid_loss:.4f}"})

    @torch.no_grad()
    def evaluate(self, trainer) -> float:
        trainer.model.eval()
        batches = self.valid_batches_factory()
        lm_sum = torch.zeros((), dtype=torch.float64, device=trainer.device)
        tokens = torch.zeros((), dtype=torch.float64, device=trainer.device)
        for _ in range(self.cfg.train.eval_iters):
            for batch in batches.next_global_batch():
                batch_sum, _, _, _ = trainer.forward_losses(batch)
                lm_sum += batch_sum.double()
                tokens += float(batch["loss_mask"].sum())
        totals = all_reduce_sum(torch.stack([lm_sum, tokens]), trainer.groups)
        trainer.model.train()
        return (totals[0] / totals[1].clamp(min=1)).item()
