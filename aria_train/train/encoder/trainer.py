"""Stage 0's step on the trainer's loop: one optimizer step = one (dataset, objective) pair's
global batch (alternating gradient descent). The loop, callbacks, timeout reporting, optimizer
protocol and checkpointing are the Trainer's (aria_train.train.trainer); only what a step
computes differs: the pair's objective (aria_train.train.encoder.losses) instead of the LM loss.

Every parameter outside the step's pair (the other datasets' classifier heads; the text tower on
a classification step) gets a zero gradient, as in one optimizer over alternating objectives:
AdamW's moments and weight decay still act on it.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from aria_train.data.encoder.batches import EncoderBatch
from aria_train.parallel.distributed import all_reduce_sum
from aria_train.train.encoder.losses import ObjectiveOutput, global_infonce, logit_scale_value, softmax_classification
from aria_train.train.trainer import Trainer


class EncoderTrainer(Trainer):
    def train_step(self, batch: EncoderBatch) -> dict:
        """One optimizer step on one pair's batch. The step timer is reset by fit before the data."""
        self.model.train()
        self.optimizer.zero_grad()
        self.optimizer.begin_microbatch(is_last=True)
        self.activity = f"forward of {batch.name} (feature all-gather)"
        with self.timer.phase("forward"):
            out = self.forward_objective(batch)
        self.activity = f"backward of {batch.name} (feature-gradient all-reduce, gradient reduce-scatter)"
        with self.timer.phase("backward"):
            out.loss_share.backward()
        lr, grad_norm = self.finish_step()
        return self._pair_metrics(batch, out, lr, grad_norm)

    def forward_objective(self, batch: EncoderBatch) -> ObjectiveOutput:
        """This rank's share of the pair's loss on its b samples, plus (vision.moe) its share of
        the ViT's balance and z-losses: each rank's, divided by the world size, as the decoder's
        are, so that the shares sum to their mean over ranks."""
        model, groups = self.model, self.groups
        patches = batch.patches.to(self.device, non_blocking=True)
        weights = batch.weights.to(self.device)
        with self._autocast():
            if batch.objective == "softmax":
                pooled, aux = model.pooled_images_and_aux(patches, batch.grid)
                out = softmax_classification(model.classify(batch.dataset, pooled), batch.labels.to(self.device),
                                             weights, group=groups.world_group, distributed=groups.distributed)
            else:
                image, aux = model.embed_images_and_aux(patches, batch.grid)
                text = model.embed_texts(batch.text_tokens.to(self.device), batch.text_lengths)
                out = global_infonce(image, text, model.logit_scale, self.cfg.encoder.max_logit_scale, weights,
                                     group=groups.world_group, distributed=groups.distributed)
        if not self.cfg.vision.moe.enabled:
            return out
        return dataclasses.replace(out, loss_share=out.loss_share + aux / groups.world_size)

    def _pair_metrics(self, batch: EncoderBatch, out: ObjectiveOutput, lr: float, grad_norm: float) -> dict:
        self.activity = "loss all_reduce"
        sums = torch.stack([out.loss_share.detach().double(), out.correct, out.rows]).to(self.device)
        loss, correct, rows = (v.item() for v in all_reduce_sum(sums, self.groups))
        steps = self.train_batches.steps
        return {
            "step": self.state.step + 1,
            "pair": batch.name,
            "loss": loss,
            f"loss/{batch.name}": loss,
            f"accuracy/{batch.name}": correct / max(rows, 1.0),  # in-batch top-1 (image -> text for nce)
            "logit_scale": logit_scale_value(self.model.logit_scale.detach(), self.cfg.encoder.max_logit_scale).item(),
            "lr": lr,
            "grad_norm": grad_norm,
            "skipped": not (math.isfinite(loss) and math.isfinite(grad_norm)),
            "global_samples": batch.global_size,
            "consumed_samples": self.state.consumed_samples + batch.global_size,
            "pair_steps": {spec.name: int(n) for spec, n in zip(self.train_batches.specs, steps)},
            **self.timer.summary(),
        }
