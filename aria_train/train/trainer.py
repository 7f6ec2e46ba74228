"""The training loop: one step = micro-batches forward/backward, gradient sync, optimizer step;
around it, callbacks (aria_train.train.callbacks) log, evaluate, save and decide when to stop.

Read `fit` for the story of a run, `train_step` for one step. Parallelism is already applied to
the model and optimizer from outside (launch/pretrain.py); the loop only follows the loss
convention of aria_train.train.loss and reduces over the process groups it is given.
"""

import contextlib
import math
import re
import sys
from dataclasses import dataclass
from typing import Optional

import torch

from aria_train.checkpoint import TrainingParts
from aria_train.errors import UserError
from aria_train.model.attention import DocumentMask
from aria_train.nn.media import MEDIA_KEYS
from aria_train.parallel.distributed import all_reduce_sum
from aria_train.parallel.groups import ParallelGroups
from aria_train.train.callbacks import AbortTraining, Callback
from aria_train.train.flops import image_train_flops
from aria_train.train.loss import chunked_cross_entropy_sum
from aria_train.train.metrics import MetricsLogger
from aria_train.train.routing_metrics import RoutingAccumulator
from aria_train.train.run_config import RunConfig
from aria_train.train.schedule import learning_rate
from aria_train.train.step_timer import StepTimer


@dataclass
class StepLosses:
    lm_sum: torch.Tensor  # summed token CE over this rank's micro-batches
    balance: torch.Tensor  # this rank's share of the balance loss
    z: torch.Tensor  # this rank's share of the z-loss


class Trainer:
    def __init__(self, cfg: RunConfig, parts: TrainingParts, logger: MetricsLogger, device: torch.device,
                 groups: ParallelGroups, callbacks: list[Callback]):
        self.cfg = cfg
        self.parts = parts
        self.model, self.optimizer, self.state = parts.model, parts.optimizer, parts.train_state
        self.train_batches = parts.data
        self.logger = logger
        self.device = device
        self.groups = groups
        self.callbacks = callbacks
        self.timer = StepTimer(device)
        moe_layers = cfg.model.moe_layers
        self.routing = RoutingAccumulator(len(moe_layers), cfg.model.moe.num_experts, device, moe_layers)
        self.history: list[dict] = []
        self.stop_reason: Optional[str] = None  # set by a callback: the run ends after this step
        self.activity = "start-up"  # what the loop is doing, for a collective-timeout message

    # ---- the run ----------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        """Trains until train_iters, a stop request or an error; returns every step's metrics."""
        exit_reason = "error"
        try:
            self._call("pre_train")
            while self.state.step < self.cfg.train.train_iters and self.stop_reason is None:
                metrics = self.train_step(self._next_global_batch())
                # a step's samples: the global batch, or what the step says it took (stage 0's pairs)
                samples = metrics.get("global_samples", self.cfg.train.global_batch_size)
                self.state.advance(samples, skipped=metrics["skipped"])
                self.history.append(metrics)
                self._call("post_step", metrics)
            if self.stop_reason:
                self.logger.info(f"stopping at step {self.state.step}: {self.stop_reason}")
            exit_reason = self.stop_reason or "finished"
        except AbortTraining as error:
            exit_reason = error.exit_reason
            raise
        except RuntimeError as error:
            if isinstance(error, UserError) or not _is_timeout(error):
                raise
            raise UserError(self._timeout_message(error)) from error
        finally:
            self._post_train(exit_reason)
        return self.history

    def _call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def _post_train(self, exit_reason: str) -> None:
        """Every callback's post_train, even when one fails (the first error is raised after)."""
        first_error = None
        for callback in self.callbacks:
            try:
                callback.post_train(self, exit_reason)
            except BaseException as error:  # noqa: B036 - re-raised below
                first_error = first_error or error
        if first_error is not None:
            raise first_error

    def _next_global_batch(self) -> list[dict]:
        self.timer.reset()
        self.activity = "data loading"
        with self.timer.phase("data"):
            return self.train_batches.next_global_batch()

    def _timeout_message(self, error: BaseException) -> str:
        seconds = self.cfg.parallel.timeout_minutes * 60
        detail = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        detail = re.sub(r"^\[[^\]]*\]\s*", "", detail)  # gloo's "[.../unbound_buffer.cc:78] " prefix
        message = (f"collective timed out after {seconds:g} s during {self.activity} at step {self.state.step + 1} "
                   f"(rank {self.groups.rank}): another rank stalled or died; backend said: {detail}; "
                   f"raise parallel.timeout_minutes if steps are legitimately this slow")
        if self.groups.rank != 0:  # launch/pretrain.py prints errors of rank 0 only
            print(f"error: {message}", file=sys.stderr, flush=True)
        return message

    # ---- one step ---------------------------------------------------------------------------
    def train_step(self, micro_batches: list[dict]) -> dict:
        """One optimizer step. The step timer is reset by the caller (fit) before the data."""
        self.model.train()
        self.activity = "token count all_reduce"
        global_tokens = self._global_token_count(micro_batches)
        sums = self._accumulate_gradients(micro_batches, global_tokens)
        lr, grad_norm = self.finish_step()
        return self._step_metrics(micro_batches, sums, global_tokens, lr, grad_norm)

    def finish_step(self) -> tuple[float, float]:
        """After backward: wait for the gradient reduction, step the optimizer at this step's
        learning rate -> (lr, gradient norm)."""
        self.activity = "gradient reduce-scatter/all-reduce wait"
        with self.timer.phase("grad_sync_wait"):
            self.optimizer.finish_grad_sync()
        lr = learning_rate(self.state.step, self.cfg.train.train_iters, self.cfg.optimizer, self.cfg.schedule)
        self.activity = "optimizer step (gradient-norm all_reduce, parameter all-gather)"
        with self.timer.phase("optimizer"):
            grad_norm = float(self.optimizer.step(lr))
        return lr, grad_norm

    def _accumulate_gradients(self, micro_batches: list[dict], global_tokens: float) -> StepLosses:
        """Forward and backward of every micro-batch; gradients accumulate (summed, see
        aria_train.optim.protocol). Returns this rank's detached loss sums."""
        num_micro, world = len(micro_batches), self.groups.world_size
        self.optimizer.zero_grad()
        sums = StepLosses(*(torch.zeros((), dtype=torch.float64, device=self.device) for _ in range(3)))
        for index, batch in enumerate(micro_batches):
            self.optimizer.begin_microbatch(is_last=index == num_micro - 1)
            self.activity = "forward (expert all-to-all)"
            with self.timer.phase("forward"):
                lm_sum, balance, z, router_stats = self.forward_losses(batch)
                # Local share of the global loss: summed over ranks and micro-batches it is the
                # token-mean LM loss plus the balance losses averaged over micro-batches and ranks.
                loss = lm_sum / global_tokens + (balance + z) / (world * num_micro)
            self.activity = "backward (expert all-to-all, gradient reduce-scatter)"
            with self.timer.phase("backward"):
                loss.backward()
            self.routing.add(router_stats, self._visual_mask(batch))
            sums.lm_sum += lm_sum.detach().double()
            sums.balance += balance.detach().double() / (world * num_micro)
            sums.z += z.detach().double() / (world * num_micro)
        return sums

    def _step_metrics(self, micro_batches, sums: StepLosses, global_tokens: float, lr: float,
                      grad_norm: float) -> dict:
        self.activity = "loss all_reduce"
        image_tokens = sum(int(b.get("num_image_tokens", 0)) for b in micro_batches)
        images = sum(len(b.get("grid") or ()) for b in micro_batches)
        videos = sum(len(b.get("video_grid") or ()) for b in micro_batches)
        audio = sum(len(b.get("audio_grid") or ()) for b in micro_batches)
        counts = torch.tensor([image_tokens, images, self._image_flops(micro_batches), videos, audio],
                              dtype=torch.float64, device=self.device)
        reduced = all_reduce_sum(torch.cat([torch.stack([sums.lm_sum, sums.balance, sums.z]), counts]), self.groups)
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
            metrics["image_flops"] = float(reduced[5].item())  # ViT + projector, training, global batch
            if self.cfg.vision.patch == "tubelet":
                metrics["video_clips"] = int(reduced[6].item())
            if self.cfg.audio.enabled:
                metrics["audio_clips"] = int(reduced[7].item())
        return metrics

    def _image_flops(self, micro_batches: list[dict]) -> float:
        """This rank's ViT + projector training FLOPs (aria_train.train.flops) for its crops."""
        projector = getattr(self.model, "multi_modal_projector", None)
        grids = [tuple(g) for b in micro_batches for g in (b.get("grid") or ())]
        if projector is None or not grids:
            return 0.0
        crops = [(h, w, q) for (h, w), q in zip(grids, projector.num_queries(grids))]
        return image_train_flops(self.cfg.vision, self.cfg.model.hidden_size, crops)

    def forward_losses(self, batch: dict):
        """One micro-batch forward -> (summed token CE, balance loss, z-loss, router stats)."""
        tokens = batch["tokens"].to(self.device, non_blocking=True)
        labels = batch["labels"].to(self.device, non_blocking=True)
        loss_mask = batch["loss_mask"].to(self.device, non_blocking=True)
        position_ids = batch["position_ids"].to(self.device, non_blocking=True)
        media = self._media(batch)
        if "document_ids" in batch:  # data.reset_attention_mask: attend within each document only
            media["document_mask"] = DocumentMask.from_document_ids(batch["document_ids"], self.device,
                                                                    non_blocking=True)
        with self._autocast():
            out = self.model(tokens, position_ids=position_ids, **media)
            lm_sum = chunked_cross_entropy_sum(
                out.hidden.flatten(0, 1), self.model.lm_head.weight, labels.flatten(), loss_mask.flatten()
            )
        return lm_sum, out.balance_loss, out.z_loss, out.router_stats

    def _media(self, batch: dict) -> dict:
        """Multimodal stages: the micro-batch's crops (and videos, audio clips), packed
        (aria_train.nn.media), tensors on the device; {} for text-only batches."""
        media = {}
        for key in MEDIA_KEYS:
            if key in batch:
                value = batch[key]
                media[key] = value.to(self.device, non_blocking=True) if isinstance(value, torch.Tensor) else value
        return media

    def _visual_mask(self, batch: dict) -> Optional[torch.Tensor]:
        """[T] True for image tokens (the batch's `is_visual`, else the model's image token id),
        on the device (moved once here, not once per MoE layer); None for text-only batches."""
        if "is_visual" in batch:
            return batch["is_visual"].reshape(-1).to(self.device, non_blocking=True)
        image_token_id = getattr(self.model, "image_token_id", None)
        if image_token_id is None or "patches" not in batch:
            return None
        return (batch["tokens"] == image_token_id).reshape(-1).to(self.device, non_blocking=True)

    def _global_token_count(self, micro_batches: list[dict]) -> float:
        count = torch.tensor(sum(float(b["loss_mask"].sum()) for b in micro_batches), dtype=torch.float64)
        return max(all_reduce_sum(count, self.groups).item(), 1.0)

    def _autocast(self):
        """bf16: the parameters already are bf16 (the optimizer cast them); autocast keeps any op
        that meets an fp32 input (RoPE tables, the residual of an fp32 embedding) in bf16 too."""
        if self.cfg.train.resolved_precision(self.device.type) == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def _is_timeout(error: BaseException) -> bool:
    """gloo: "Timed out waiting 3000ms for recv operation"; NCCL: "... ran for N milliseconds
    before timing out"; the c10d store: "Socket Timeout"."""
    return bool(re.search(r"timed out|timing out|timeout", str(error), re.IGNORECASE))
