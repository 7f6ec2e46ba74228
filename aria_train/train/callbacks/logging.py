"""Metric windows: throughput over the steps since the last log line, router statistics summed over
them (one all-reduce), progress (elapsed, ETA), then the metrics logger (console, JSONL, wandb)."""

from __future__ import annotations

import time

import torch

from aria_train.train.callbacks.callback import Callback
from aria_train.train.flops import peak_flops, train_flops_per_token
from aria_train.train.routing_metrics import console_summary


class MetricsWindow(Callback):
    """Logs the first step of the run (step 1, or the first after a resume), every
    `logging.log_interval` steps and the last step. Throughput counts training time only (no
    evaluation or saves); elapsed time and the ETA count everything since training started.
    Model FLOPs: the decoder's per token, plus the ViT and projector's for the step's crops
    (`image_flops`); MFU against the device's dense bf16 peak
    (aria_train.train.flops.PEAK_BF16_FLOPS), omitted for a device the table does not know."""

    def __init__(self, cfg, device: torch.device):
        self.cfg = cfg
        self.flops_per_token = train_flops_per_token(cfg.model, cfg.data.seq_length)
        self.device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        self.peak = peak_flops(self.device_name) if self.device_name else None
        self.start_step, self.start_time = 0, time.perf_counter()
        self._reset()

    def pre_train(self, trainer) -> None:
        self.start_step, self.start_time = trainer.state.step, time.perf_counter()
        trainer.logger.start(trainer.state.step)
        if self.device_name and self.peak is None:
            trainer.logger.info(f"MFU not reported: no dense bf16 peak known for {self.device_name!r} "
                                f"(aria_train.train.flops.PEAK_BF16_FLOPS)")

    def _due(self, step: int) -> bool:
        last = self.cfg.train.train_iters
        return step % self.cfg.logging.log_interval == 0 or step in (last, self.start_step + 1)

    def _progress(self, step: int) -> dict:
        elapsed = time.perf_counter() - self.start_time
        done = max(step - self.start_step, 1)
        remaining = max(self.cfg.train.train_iters - step, 0)
        return {"train_iters": self.cfg.train.train_iters, "elapsed_s": elapsed, "eta_s": elapsed / done * remaining}

    def _reset(self) -> None:
        self.seconds, self.tokens, self.image_tokens, self.flops = 0.0, 0, 0, 0.0

    def post_step(self, trainer, metrics: dict) -> None:
        cfg, step = self.cfg, trainer.state.step
        tokens = cfg.train.global_batch_size * cfg.data.seq_length
        self.tokens += tokens
        self.image_tokens += metrics.get("image_tokens", 0)
        self.flops += tokens * self.flops_per_token + metrics.get("image_flops", 0.0)
        self.seconds += metrics["step_time_s"]
        if not self._due(step):
            return
        metrics.update(trainer.timer.window_summary())  # the window's mean split (CUDA: read once here)
        trainer.activity = "router statistics all_reduce"
        routing, routing_counts = trainer.routing.reduce_and_reset(trainer.groups)
        metrics.update(routing)
        metrics["router_counts"] = routing_counts
        metrics.update(self._throughput(trainer.groups.world_size))
        metrics["skipped_steps"] = trainer.state.skipped_steps
        metrics.update(self._progress(step))
        metrics["console_extras"] = console_summary(routing)
        bad = getattr(trainer.train_batches, "bad_samples", None)  # multimodal data: skipped samples
        if bad is not None:
            metrics["bad_samples"] = bad.count
        trainer.logger.log(metrics)
        summary = bad.summary() if bad is not None else None
        if summary:  # after the first few one-line reports, one line per log interval at most
            trainer.logger.info(summary)
        self._reset()

    def _throughput(self, world: int) -> dict:
        seconds = max(self.seconds, 1e-9)
        out = {"tokens_per_s": self.tokens / seconds, "tokens_per_s_per_rank": self.tokens / seconds / world}
        if self.cfg.multimodal:
            out["visual_tokens_per_s"] = self.image_tokens / seconds
            out["text_tokens_per_s"] = (self.tokens - self.image_tokens) / seconds
        out["tflops_per_s_per_rank"] = self.flops / seconds / world / 1e12
        if self.peak is not None:
            out["mfu"] = self.flops / seconds / world / self.peak
        return out
