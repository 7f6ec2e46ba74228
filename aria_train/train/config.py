"""Configuration of the training loop (`train.*`), the learning-rate schedule (`schedule.*`),
metrics logging (`logging.*`) and the run directory (`run.*`)."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Literal, Optional

from aria_train.config import ConfigError, require_positive
from aria_train.model.freeze import FreezeGroup


@dataclass
class TrainConfig:
    train_iters: int = 40
    micro_batch_size: int = 4
    global_batch_size: int = 8
    seed: int = 1234
    eval_interval: int = 20
    eval_iters: int = 2
    exit_interval: Optional[int] = None  # stop (with a checkpoint) after this step
    exit_duration_mins: Optional[float] = None  # stop (with a checkpoint) after this much wall time
    exit_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])  # save, then exit 0
    max_nonfinite_steps: int = 5  # consecutive NaN/Inf steps (skipped) before the run stops
    # fp32: fp32 parameters, gradients and optimizer state, no autocast.
    # bf16: Megatron's mixed-precision layout: bf16 parameters (forward/backward under bf16
    #   autocast), fp32 main gradients accumulated over micro-batches and reduce-scattered, fp32
    #   master weights and AdamW moments (ZeRO-1 shards); checkpoints hold the fp32 masters.
    # auto: bf16 on CUDA, fp32 on CPU.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # A stage's length in tokens, as papers state it: train_iters and global_batch_size follow
    # (aria_train.train.budget) unless given explicitly, which then wins (with a note).
    token_budget: Optional[int] = None  # tokens to train on; train_iters = ceil(budget / tokens per step)
    global_batch_tokens: Optional[int] = None  # tokens per step; global_batch_size = this / data.seq_length
    freeze: list[FreezeGroup] = field(default_factory=list)  # no gradient, no optimizer state (model/freeze.py)

    def validate(self) -> "TrainConfig":
        require_positive(self, "train", "train_iters", "micro_batch_size", "global_batch_size")
        for name in self.exit_signals:
            if not hasattr(signal, name) or not name.startswith("SIG"):
                raise ConfigError(f"train.exit_signals has {name!r}, which is not a signal name")
        return self

    def resolved_precision(self, device_type: str) -> str:
        """"fp32" or "bf16": `precision` with auto decided by the device."""
        if self.precision == "auto":
            return "bf16" if device_type == "cuda" else "fp32"
        return self.precision

    def check_batch_fits(self, world_size: int) -> None:
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step != 0:
            raise ConfigError(
                f"train.global_batch_size={self.global_batch_size} is not a multiple of "
                f"train.micro_batch_size x world size = {per_step}"
            )


@dataclass
class ScheduleConfig:
    style: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_iters: int = 5
    decay_iters: Optional[int] = None  # None = train_iters
    wsd_decay_fraction: float = 0.2  # fraction of the run spent decaying, for style=wsd


@dataclass
class LoggingConfig:
    log_interval: int = 5  # steps between console/metrics lines (step 1 and the last step are always logged)
    log_dir: str = "{run_dir}"  # metrics.jsonl, config.yaml, exit_status, wandb/; "{run_dir}" = the run directory
    wandb: bool = False
    wandb_project: str = "aria-train"
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"


@dataclass
class RunDirConfig:
    """Where a run writes (aria_train.train.run_dir): ROOT/NAME/ holds checkpoints/, metrics.jsonl,
    config.yaml, exit_status and wandb/."""

    name: str = ""  # "" = stage<N>-<YYYYmmdd-HHMMSS>, chosen at start; may hold "/" (a group of runs)
    root: str = "runs"
    overwrite: bool = False  # write over another run's checkpoints and metrics in the same directories
