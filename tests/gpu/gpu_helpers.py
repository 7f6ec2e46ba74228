"""Bodies of the device tests (tests/gpu), written for any device: tests/gpu runs them on CUDA,
tests/train/test_device_helpers.py runs the device-independent ones on CPU so their logic is
checked where no GPU is lent.

Imports: torch and aria_train's model / moe / optim / parallel / train / checkpoint only (the GPU
machine has no megatron-core or sentencepiece: see bench/gpu_common.py).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from aria_train.checkpoint import Checkpointer, TrainingParts
from aria_train.model.config import ModelConfig
from aria_train.model.decoder import build_model
from aria_train.moe.config import MoEConfig
from aria_train.optim.build import build_optimizer
from aria_train.parallel.groups import ParallelGroups
from aria_train.train.callbacks import default_callbacks
from aria_train.train.metrics import MetricsLogger
from aria_train.train.run_config import build_config, describe_run
from aria_train.train.state import TrainState
from aria_train.train.trainer import Trainer


def small_model_config(**overrides) -> ModelConfig:
    """Widths multiple of 16 (the grouped kernel's alignment on CUDA), 16 experts top-4."""
    moe = MoEConfig(num_experts=16, top_k=4, num_shared_experts=2, expert_ffn_size=64, balance_group_size=4)
    return ModelConfig(**{"vocab_size": 512, "hidden_size": 128, "num_layers": 2, "num_heads": 4, "head_dim": 32,
                          "moe": moe, **overrides})


class CountSyncs:
    """with CountSyncs() as syncs: ...  -> syncs.count: CUDA synchronisations seen by
    torch.cuda.set_sync_debug_mode (one warning per synchronising call)."""

    def __enter__(self):
        self._record = warnings.catch_warnings(record=True)
        self.caught = self._record.__enter__()
        warnings.simplefilter("always")
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")
        self._record.__exit__(*exc)

    @property
    def count(self) -> int:
        return sum("synchronizing" in str(w.message) for w in self.caught)


class DeviceRandomBatches:
    """Training data drawn from the device's own global RNG (the CUDA generator on a GPU): a
    resumed run sees the batches of an uninterrupted one only if the checkpoint restored that RNG."""

    num_micro_batches = 2

    def __init__(self, vocab: int, seq: int, device: torch.device):
        self.vocab, self.seq, self.device = vocab, seq, device
        self.consumed_samples = 0

    def next_global_batch(self) -> list[dict]:
        batches = []
        for _ in range(self.num_micro_batches):
            tokens = torch.randint(0, self.vocab, (2, self.seq + 1), device=self.device).cpu()
            batches.append({"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": torch.ones(2, self.seq),
                            "position_ids": torch.arange(self.seq).expand(2, self.seq)})
        self.consumed_samples += 4
        return batches

    def state_dict(self) -> dict:
        return {"consumed_samples": self.consumed_samples}

    def load_state_dict(self, state: dict) -> None:
        self.consumed_samples = int(state["consumed_samples"])


def train_in_process(device: torch.device, workdir: Path, log: str, steps: int, precision: str,
                     exit_interval=None, load: bool = False) -> list[dict]:
    """The trainer with its callbacks (checkpoint every 3 steps into workdir/ckpt), on one
    process of `device`; returns each step's metrics."""
    overrides = {"train.train_iters": steps, "train.global_batch_size": 4, "train.micro_batch_size": 2,
                 "train.eval_interval": 0, "train.precision": precision, "train.exit_interval": exit_interval,
                 "data.seq_length": 32, "data.prefetch": 0, "logging.log_interval": 1,
                 "logging.log_dir": str(workdir / log), "checkpoint.save": str(workdir / "ckpt"),
                 "checkpoint.save_interval": 3, "checkpoint.load": str(workdir / "ckpt") if load else ""}
    cfg = build_config(1, overrides=overrides)
    torch.manual_seed(cfg.train.seed)  # as launch/pretrain.py; a resumed run's checkpoint overrides it
    groups = ParallelGroups()
    model = build_model(cfg.model, device="meta")
    model.to_empty(device=device)
    model.init_weights(cfg.train.seed)
    optimizer = build_optimizer(model, cfg.optimizer, groups,
                                param_dtype=torch.bfloat16 if precision == "bf16" else None)
    parts = TrainingParts(model, optimizer, TrainState(), DeviceRandomBatches(cfg.model.vocab_size, 32, device))
    logger = MetricsLogger(cfg.logging, rank=0)
    checkpointer = Checkpointer(cfg.checkpoint, groups, describe_run(cfg), logger)
    checkpointer.maybe_resume(parts)
    trainer = Trainer(cfg, parts, logger, device, groups, default_callbacks(cfg, device, checkpointer))
    history = trainer.fit()
    optimizer.close()
    logger.close()
    return history


def exact_resume(device: torch.device, workdir: Path, precision: str) -> tuple[list, list, bool]:
    """6 steps straight vs 3 steps, stop, resume to 6 (the RNG scrambled in between): the
    records of both, and whether the device RNG ended in the same state."""
    straight = train_in_process(device, workdir / "a", "straight", 6, precision)
    rng_straight = _device_rng(device)
    first = train_in_process(device, workdir / "b", "first", 6, precision, exit_interval=3)
    torch.manual_seed(12345)  # only the checkpoint can put the generators back
    resumed = train_in_process(device, workdir / "b", "resumed", 6, precision, load=True)
    return straight, first + resumed, torch.equal(rng_straight, _device_rng(device))


def _device_rng(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def loss_curves(device: torch.device, workdir: Path, steps: int = 20) -> dict:
    """The fp32 and the bf16 layout trained on the same batches: per-step losses."""
    curves = {}
    for precision in ("fp32", "bf16"):  # train_in_process seeds every generator the same way
        history = train_in_process(device, workdir / precision, "run", steps, precision)
        curves[precision] = [m["loss"] for m in history]
    return curves
