"""The training loop: one step = micro-batches forward/backward, gradient sync, optimizer step.

Read `fit` top to bottom for the story of a run; `train_step` for one step. Parallelism is
already applied to the model and optimizer from outside (launch/pretrain.py); the loop only
follows the loss convention of aria_train.train.loss.
"""

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from aria_train.config.schema import RunConfig
from aria_train.errors import UserError
from aria_train.parallel import distributed as dist_utils
from aria_train.train.flops import peak_flops, train_flops_per_token
from aria_train.train.loss import chunked_cross_entropy_sum
from aria_train.train.metrics import MetricsLogger
from aria_train.train.schedule import learning_rate
from aria_train.train.step_timer import StepTimer
from aria_train.train.stopping import StopController


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done (skipped non-finite steps included)
    consumed_samples: int = 0  # global samples consumed by those steps
    skipped_steps: int = 0  # steps whose update was skipped for a non-finite loss or gradient


@dataclass
class StepLosses:
    lm_sum: torch.Tensor  # summed token CE over this rank's micro-batches
    balance: torch.Tensor  # this rank's share of the balance loss
    z: torch.Tensor  # this rank's share of the z-loss


class Trainer:
    def __init__(
        self,
        cfg: RunConfig,
        model: torch.nn.Module,
        optimizer,
        train_batches,
        logger: MetricsLogger,
        device: torch.device,
        valid_batches_factory: Optional[Callable[[], object]] = None,
        checkpointer=None,
        state: Optional[TrainState] = None,
    ):
        self.cfg = cfg
        self.model = model
        self.optimizer = optimizer
        self.train_batches = train_batches
        self.valid_batches_factory = valid_batches_factory
        self.logger = logger
        self.device = device
        self.checkpointer = checkpointer
        self.state = state or TrainState()
        self.world = dist_utils.world_size()
        self.timer = StepTimer(device)
        self.flops_per_token = train_flops_per_token(cfg.model, cfg.data.seq_length)
        self.peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None

    # ---- the run ----------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        cfg = self.cfg
        history = []
        stopper = StopController(cfg.train, self.device)
        consecutive_nonfinite = 0
        window_start, window_tokens = time.perf_counter(), 0
        try:
            while self.state.step < cfg.train.train_iters:
                metrics = self.train_step(self.train_batches.next_global_batch())
                self.state.step += 1
                self.state.consumed_samples += cfg.train.global_batch_size
                window_tokens += cfg.train.global_batch_size * cfg.data.seq_length
                history.append(metrics)

                if metrics["skipped"]:
                    self.state.skipped_steps += 1
                    consecutive_nonfinite += 1
                    self.logger.info(f"step {self.state.step}: non-finite loss or gradient norm, update skipped "
                                     f"({consecutive_nonfinite} in a row, {self.state.skipped_steps} in all)")
                    if consecutive_nonfinite >= cfg.train.max_nonfinite_steps:
                        raise UserError(
                            f"{consecutive_nonfinite} consecutive non-finite steps up to step {self.state.step}; "
                            f"stopping without saving (the last good checkpoint is kept)"
                        )
                else:
                    consecutive_nonfinite = 0

                if self.state.step % cfg.logging.log_interval == 0 or self.state.step == cfg.train.train_iters:
                    elapsed = time.perf_counter() - window_start
                    metrics["tokens_per_s"] = window_tokens / elapsed
                    metrics["tokens_per_s_per_rank"] = window_tokens / elapsed / self.world
                    if self.peak is not None:
                        metrics["mfu"] = window_tokens * self.flops_per_token / elapsed / self.world / self.peak
                    metrics["skipped_steps"] = self.state.skipped_steps
                    self.logger.log(metrics)
                    window_start, window_tokens = time.perf_counter(), 0
                if self._eval_due():
                    valid_loss = self.evaluate()
                    self.logger.log({"step": self.state.step, "valid_loss": valid_loss,
                                     "console_extras": f"validation loss {valid_loss:.4f}"})

                stop_reason = stopper.agreed_reason()
                if cfg.train.exit_interval is not None and self.state.step >= cfg.train.exit_interval:
                    stop_reason = "exit-interval"
                if self.checkpointer is not None and (stop_reason or self._save_due()):
                    self.checkpointer.save(self)
                if stop_reason:
                    self.logger.info(f"stopping at step {self.state.step}: {stop_reason}")
                    break
        finally:
            stopper.restore()
            if self.checkpointer is not None:
                self.checkpointer.finalize(self)
        return history

    def _save_due(self) -> bool:
        interval = self.cfg.checkpoint.save_interval
        last = self.state.step == self.cfg.train.train_iters
        return bool(self.cfg.checkpoint.save) and (bool(interval and self.state.step % interval == 0) or last)

    def _eval_due(self) -> bool:
        interval = self.cfg.train.eval_interval
        return bool(self.valid_batches_factory and interval and self.state.step % interval == 0)

    # ---- one step ---------------------------------------------------------------------------
    def train_step(self, micro_batches: list[dict]) -> dict:
        self.model.train()
        self.timer.reset()
        num_micro = len(micro_batches)
        global_tokens = self._global_token_count(micro_batches)
        self.optimizer.zero_grad()
        sums = StepLosses(*(torch.zeros((), dtype=torch.float64, device=self.device) for _ in range(3)))
        for index, batch in enumerate(micro_batches):
            self.optimizer.begin_microbatch(is_last=index == num_micro - 1)
            with self.timer.phase("forward"):
                lm_sum, balance, z = self._forward(batch)
                # Local share of the global loss: summed over ranks and micro-batches it is the
                # token-mean LM loss plus the balance losses averaged over micro-batches and ranks.
                loss = lm_sum / global_tokens + (balance + z) / (self.world * num_micro)
            with self.timer.phase("backward"):
                loss.backward()
            sums.lm_sum += lm_sum.detach().double()
            sums.balance += balance.detach().double() / (self.world * num_micro)
            sums.z += z.detach().double() / (self.world * num_micro)
        with self.timer.phase("grad_sync_wait"):
            self.optimizer.finish_grad_sync()
        lr = learning_rate(self.state.step, self.cfg.train.train_iters, self.cfg.optimizer, self.cfg.schedule)
        with self.timer.phase("optimizer"):
            grad_norm = float(self.optimizer.step(lr))

        reduced = dist_utils.all_reduce_sum(torch.stack([sums.lm_sum, sums.balance, sums.z]))
        lm_loss = reduced[0].item() / global_tokens
        balance, z = reduced[1].item(), reduced[2].item()
        loss = lm_loss + balance + z
        return {
            "step": self.state.step + 1,
            "loss": loss,
            "lm_loss": lm_loss,
            "balance_loss": balance,
            "z_loss": z,
            "lr": lr,
            "grad_norm": grad_norm,
            "skipped": not (math.isfinite(loss) and math.isfinite(grad_norm)),
            "consumed_samples": self.state.consumed_samples + self.cfg.train.global_batch_size,
            **self.timer.summary(),
        }

    def _forward(self, batch: dict):
        tokens = batch["tokens"].to(self.device, non_blocking=True)
        labels = batch["labels"].to(self.device, non_blocking=True)
        loss_mask = batch["loss_mask"].to(self.device, non_blocking=True)
        position_ids = batch["position_ids"].to(self.device, non_blocking=True)
        with self._autocast():
            out = self.model(tokens, position_ids=position_ids)
            lm_sum = chunked_cross_entropy_sum(
                out.hidden.flatten(0, 1), self.model.lm_head.weight, labels.flatten(), loss_mask.flatten()
            )
        return lm_sum, out.balance_loss, out.z_loss

    def _global_token_count(self, micro_batches: list[dict]) -> float:
        count = torch.tensor(sum(float(b["loss_mask"].sum()) for b in micro_batches), dtype=torch.float64)
        return max(dist_utils.all_reduce_sum(count).item(), 1.0)

    def _autocast(self):
        precision = self.cfg.train.precision
        use_bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        if use_bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---- validation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        batches = self.valid_batches_factory()
        lm_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        tokens = torch.zeros((), dtype=torch.float64, device=self.device)
        for _ in range(self.cfg.train.eval_iters):
            for batch in batches.next_global_batch():
                batch_sum, _, _ = self._forward(batch)
                lm_sum += batch_sum.double()
                tokens += float(batch["loss_mask"].sum())
        totals = dist_utils.all_reduce_sum(torch.stack([lm_sum, tokens]))
        self.model.train()
        return (totals[0] / totals[1].clamp(min=1)).item()
