"""The training loop: one step = micro-batches forward/backward, gradient sync, optimizer step.

Read `fit` top to bottom for the story of a run; `train_step` for one step. Parallelism is
already applied to the model and optimizer from outside (launch/pretrain.py); the loop only
follows the loss convention of aria_train.train.loss.
"""

import contextlib
import math
import re
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from aria_train.train.run_config import RunConfig
from aria_train.errors import UserError
from aria_train.parallel import distributed as dist_utils
from aria_train.train.flops import peak_flops, train_flops_per_token
from aria_train.train.loss import chunked_cross_entropy_sum
from aria_train.train.metrics import MetricsLogger
from aria_train.train.routing_metrics import RoutingAccumulator, console_summary
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
        stopper: Optional[StopController] = None,
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
        self.stopper = stopper
        self.world = dist_utils.world_size()
        self.timer = StepTimer(device)
        self.flops_per_token = train_flops_per_token(cfg.model, cfg.data.seq_length)
        self.peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
        self.routing = RoutingAccumulator(cfg.model.num_layers, cfg.model.moe.num_experts, device)
        self._activity = "start-up"  # what the loop is doing, for a collective-timeout message

    # ---- the run ----------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        """Trains until train_iters, a stop request or an error. Rank 0 leaves LOG_DIR/exit_status
        ("<reason> <step>"; reason: finished | signal | exit-duration | exit-interval |
        nonfinite | error) for job chaining (launch/slurm/run_job.sh)."""
        cfg = self.cfg
        history = []
        stopper = self.stopper or StopController(cfg.train, self.device)
        consecutive_nonfinite = 0
        window_seconds, window_tokens, window_image_tokens = 0.0, 0, 0  # training time only: no eval or saves
        exit_reason = "error"
        try:
            while self.state.step < cfg.train.train_iters:
                self.timer.reset()
                self._activity = "data loading"
                with self.timer.phase("data"):
                    micro_batches = self.train_batches.next_global_batch()
                metrics = self.train_step(micro_batches)
                self.state.step += 1
                self.state.consumed_samples += cfg.train.global_batch_size
                window_tokens += cfg.train.global_batch_size * cfg.data.seq_length
                window_image_tokens += metrics.get("image_tokens", 0)
                window_seconds += metrics["step_time_s"]
                history.append(metrics)

                if metrics["skipped"]:
                    self.state.skipped_steps += 1
                    consecutive_nonfinite += 1
                    self.logger.info(f"step {self.state.step}: non-finite loss or gradient norm, update skipped "
                                     f"({consecutive_nonfinite} in a row, {self.state.skipped_steps} in all)")
                    if consecutive_nonfinite >= cfg.train.max_nonfinite_steps:
                        exit_reason = "nonfinite"
                        raise UserError(
                            f"{consecutive_nonfinite} consecutive non-finite steps up to step {self.state.step} "
                            f"(train.max_nonfinite_steps={cfg.train.max_nonfinite_steps}); stopping without "
                            f"saving (the last good checkpoint is kept)"
                        )
                else:
                    consecutive_nonfinite = 0

                if self.state.step % cfg.logging.log_interval == 0 or self.state.step == cfg.train.train_iters:
                    self._activity = "router statistics all_reduce"
                    routing, routing_counts = self.routing.reduce_and_reset()
                    metrics.update(routing)
                    metrics["router_counts"] = routing_counts
                    seconds = max(window_seconds, 1e-9)
                    metrics["tokens_per_s"] = window_tokens / seconds
                    metrics["tokens_per_s_per_rank"] = window_tokens / seconds / self.world
                    if cfg.multimodal:
                        metrics["visual_tokens_per_s"] = window_image_tokens / seconds
                        metrics["text_tokens_per_s"] = (window_tokens - window_image_tokens) / seconds
                    if self.peak is not None:
                        metrics["mfu"] = window_tokens * self.flops_per_token / seconds / self.world / self.peak
                    metrics["skipped_steps"] = self.state.skipped_steps
                    metrics["console_extras"] = console_summary(routing)
                    self.logger.log(metrics)
                    window_seconds, window_tokens, window_image_tokens = 0.0, 0, 0
                if self._eval_due():
                    self._activity = "validation"
                    valid_loss = self.evaluate()
                    self.logger.log({"step": self.state.step, "valid_loss": valid_loss,
                                     "console_extras": f"validation loss {valid_loss:.4f}"})

                self._activity = "stop agreement all_reduce"
                stop_reason = stopper.agreed_reason()
                if cfg.train.exit_interval is not None and self.state.step >= cfg.train.exit_interval:
                    stop_reason = stop_reason or "exit-interval"
                # No periodic save inside a non-finite streak: a good checkpoint is not pruned for
                # one whose step was skipped. A stop request still saves (the weights are the last
                # good ones: skipped steps do not update them).
                if self.checkpointer is not None and (stop_reason or (self._save_due() and not consecutive_nonfinite)):
                    self._activity = "checkpoint save"
                    self.checkpointer.save(self)
                if stop_reason:
                    self.logger.info(f"stopping at step {self.state.step}: {stop_reason}")
                    exit_reason = stop_reason
                    break
            else:
                exit_reason = "finished"
        except RuntimeError as error:
            if isinstance(error, UserError) or not _is_timeout(error):
                raise
            raise UserError(self._timeout_message(error)) from error
        finally:
            stopper.restore()
            try:
                if self.checkpointer is not None and exit_reason != "error":
                    self._activity = "checkpoint finalize"
                    self.checkpointer.finalize(self)
            finally:
                self.logger.write_exit_status(exit_reason, self.state.step)
        return history

    def _timeout_message(self, error: BaseException) -> str:
        seconds = self.cfg.parallel.timeout_minutes * 60
        detail = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        detail = re.sub(r"^\[[^\]]*\]\s*", "", detail)  # gloo's "[.../unbound_buffer.cc:78] " prefix
        message = (f"collective timed out after {seconds:g} s during {self._activity} at step {self.state.step + 1} "
                   f"(rank {dist_utils.rank()}): another rank stalled or died; backend said: {detail}; "
                   f"raise parallel.timeout_minutes if steps are legitimately this slow")
        if dist_utils.rank() != 0:  # launch/pretrain.py prints errors of rank 0 only
            print(f"error: {message}", file=sys.stderr, flush=True)
        return message

    def _save_due(self) -> bool:
        interval = self.cfg.checkpoint.save_interval
        last = self.state.step == self.cfg.train.train_iters
        return bool(self.cfg.checkpoint.save) and (bool(interval and self.state.step % interval == 0) or last)

    def _eval_due(self) -> bool:
        interval = self.cfg.train.eval_interval
        return bool(self.valid_batches_factory and interval and self.state.step % interval == 0)

    # ---- one step ---------------------------------------------------------------------------
    def train_step(self, micro_batches: list[dict]) -> dict:
        """One optimizer step. The step timer is reset by the caller (fit) before the data."""
        self.model.train()
        num_micro = len(micro_batches)
        self._activity = "token count all_reduce"
        global_tokens = self._global_token_count(micro_batches)
        self.optimizer.zero_grad()
        sums = StepLosses(*(torch.zeros((), dtype=torch.float64, device=self.device) for _ in range(3)))
        for index, batch in enumerate(micro_batches):
            self.optimizer.begin_microbatch(is_last=index == num_micro - 1)
            self._activity = "forward (expert all-to-all)"
            with self.timer.phase("forward"):
                lm_sum, balance, z, router_stats = self._forward(batch)
                # Local share of the global loss: summed over ranks and micro-batches it is the
                # token-mean LM loss plus the balance losses averaged over micro-batches and ranks.
                loss = lm_sum / global_tokens + (balance + z) / (self.world * num_micro)
            self._activity = "backward (expert all-to-all, gradient reduce-scatter)"
            with self.timer.phase("backward"):
                loss.backward()
            self.routing.add(router_stats, self._visual_mask(batch))
            sums.lm_sum += lm_sum.detach().double()
            sums.balance += balance.detach().double() / (self.world * num_micro)
            sums.z += z.detach().double() / (self.world * num_micro)
        self._activity = "gradient reduce-scatter/all-reduce wait"
        with self.timer.phase("grad_sync_wait"):
            self.optimizer.finish_grad_sync()
        lr = learning_rate(self.state.step, self.cfg.train.train_iters, self.cfg.optimizer, self.cfg.schedule)
        self._activity = "optimizer step (gradient-norm all_reduce, parameter all-gather)"
        with self.timer.phase("optimizer"):
            grad_norm = float(self.optimizer.step(lr))

        self._activity = "loss all_reduce"
        image_tokens = sum(int(b.get("num_image_tokens", 0)) for b in micro_batches)
        images = sum(len(b.get("grid") or ()) for b in micro_batches)
        counts = torch.tensor([image_tokens, images], dtype=torch.float64, device=self.device)
        reduced = dist_utils.all_reduce_sum(torch.cat([torch.stack([sums.lm_sum, sums.balance, sums.z]), counts]))
        lm_loss = reduced[0].item() / global_tokens
        balance, z = reduced[1].item(), reduced[2].item()
        loss = lm_loss + balance + z
        metrics = {
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
        if self.cfg.multimodal:
            metrics["image_tokens"] = int(reduced[3].item())  # over the global batch
            metrics["image_crops"] = int(reduced[4].item())
        return metrics

    def _forward(self, batch: dict):
        tokens = batch["tokens"].to(self.device, non_blocking=True)
        labels = batch["labels"].to(self.device, non_blocking=True)
        loss_mask = batch["loss_mask"].to(self.device, non_blocking=True)
        position_ids = batch["position_ids"].to(self.device, non_blocking=True)
        images = {}
        if "patches" in batch:  # multimodal stages: the micro-batch's crops, packed
            patches = batch["patches"]
            images = {"patches": None if patches is None else patches.to(self.device, non_blocking=True),
                      "grid": batch["grid"]}
        with self._autocast():
            out = self.model(tokens, position_ids=position_ids, **images)
            lm_sum = chunked_cross_entropy_sum(
                out.hidden.flatten(0, 1), self.model.lm_head.weight, labels.flatten(), loss_mask.flatten()
            )
        return lm_sum, out.balance_loss, out.z_loss, out.router_stats

    def _visual_mask(self, batch: dict) -> Optional[torch.Tensor]:
        """[T] True for image tokens (the batch's `is_visual`, else the model's image token id);
        None for text-only batches."""
        if "is_visual" in batch:
            return batch["is_visual"].reshape(-1)
        image_token_id = getattr(self.model, "image_token_id", None)
        if image_token_id is None or "patches" not in batch:
            return None
        return (batch["tokens"] == image_token_id).reshape(-1)

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
                batch_sum, _, _, _ = self._forward(batch)
                lm_sum += batch_sum.double()
                tokens += float(batch["loss_mask"].sum())
        totals = dist_utils.all_reduce_sum(torch.stack([lm_sum, tokens]))
        self.model.train()
        return (totals[0] / totals[1].clamp(min=1)).item()


def _is_timeout(error: BaseException) -> bool:
    """gloo: "Timed out waiting 3000ms for recv operation"; NCCL: "... ran for N milliseconds
    before timing out"; the c10d store: "Socket Timeout"."""
    return bool(re.search(r"timed out|timing out|timeout", str(error), re.IGNORECASE))
