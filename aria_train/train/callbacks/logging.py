"""Metric windows: throughput over the steps since the last log line, router statistics summed over
them (one all-reduce), then the metrics logger (console, JSONL, wandb)."""

from __future__ import annotations

import torch

from aria_train.train.callbacks.callback import Callback
from aria_train.train.flops import peak_flops, train_flops_per_token
from aria_train.train.routing_metrics import console_summary


class MetricsWindow(Callback):
    """Logs every `logging.log_interval` steps and at the last step. Throughput counts training
    time only (no evaluation or saves). Model FLOPs: the decoder's per token, plus the ViT and
    projector's for the step's crops (`image_flops`); MFU against the device's dense bf16 peak
    (aria_train.train.flops.PEAK_BF16_FLOPS), omitted for a device the table does not know."""

    def __init__(self, cfg, device: torch.device):
        self.cfg = cfg
        self.flops_per_token = train_flops_per_token(cfg.model, cfg.data.seq_length)
        self.device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        self.peak = peak_flops(self.device_name) if self.device_name else None
        self._reset()

    def pre_train(self, trainer) -> None:
        if self.device_name and self.peak is None:
            trainer.logger.info(f"MFU not reported: no dense bf16 peak known for {self.device_name!r} "
                                f"(aria_train.train.flops.PEAK_BF16_FLOPS)")

    def _reset(self) -> None:
        self.seconds, self.tokens, self.image_tokens, self.flops = 0.0, 0, 0, 0.0

    def post_step(self, trainer, metrics: dict) -> None:
        cfg, step = self.cfg, trainer.state.step
        tokens = cfg.train.global_batch_size * cfg.data.seq_length
        self.tokens += tokens
        self.image_tokens += metrics.get("image_tokens", 0)
        self.flops += tokens * self.flops_per_token + metrics.get("image_flops", 0.0)
        self.seconds += metrics["step_time_s"]
        if step % cfg.logging.log_interval != 0 and step != cfg.train.train_iters:
            return
        metrics.update(trainer.timer.window_summary())  # the window's mean split (CUDA: read once here)
        trainer.activity = "router statistics all_reduce"
        routing, routing_counts = trainer.routing.reduce_and_reset(trainer.groups)
        metrics.update(routing)
        metrics["router_counts"] = routing_counts
        metrics.update(self._throughput(trainer.groups.world_size))
        metrics["skipped_steps"] = trainer.state.skipped_steps
        metrics["console_extras"] = console_summary(routing)
        trainer.logger.log(metrics)
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
