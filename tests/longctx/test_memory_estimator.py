"""The activation-memory estimator against the measured CPU peak of a real training step.

Measured: the peak of live CPU tensor bytes (torch.profiler allocator events) during one forward
+ chunked loss + backward of a tiny model, above the state before the step (weights and
pre-allocated fp32 gradient buffers, as the ZeRO-1 optimizer keeps them, already exist).
Predicted: aria_train.accounting.activation_memory(...).peak for the same config, sequence,
micro-batch 1, checkpointing mode and precision. Each case prints both numbers."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aria_train.accounting import activation_memory, measure_cpu_peak_bytes
from aria_train.train.run_config import build_config
from aria_train.model.decoder import build_model
from aria_train.train.loss import chunked_cross_entropy_sum

ROOT = Path(__file__).resolve().parents[2]
# layer-dominated: 4 layers, small vocabulary; loss-dominated: the tiny preset as it is
LAYERS = {"model.num_layers": 4, "model.vocab_size": 256}


def _measure(overrides: dict, mode: str, seq: int, precision: str) -> tuple[int, float]:
    cfg = build_config(1, overrides={**overrides, "model.activation_checkpointing": mode}).model
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    tokens = torch.randint(0, cfg.vocab_size, (1, seq))

    def step():
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            out = model(tokens)
            loss = chunked_cross_entropy_sum(out.hidden.flatten(0, 1), model.lm_head.weight, tokens.flatten(),
                                             torch.ones(seq))
        (loss + out.balance_loss + out.z_loss).backward()

    measured = measure_cpu_peak_bytes(step)
    predicted = activation_memory(cfg, seq, 1, mode, precision=precision).peak
    return measured, predicted


@pytest.mark.parametrize("overrides,seq,precision", [
    (LAYERS, 512, "fp32"), (LAYERS, 2048, "fp32"), ({}, 1024, "fp32"), ({}, 1024, "bf16"),
], ids=["4layers-v256-seq512-fp32", "4layers-v256-seq2048-fp32", "tiny-seq1024-fp32", "tiny-seq1024-bf16autocast"])
def test_prediction_within_15_percent_of_measured_peak(overrides, seq, precision):
    for mode in ("none", "full", "selective"):
        measured, predicted = _measure(overrides, mode, seq, precision)
        error = predicted / measured - 1
        print(f"{overrides or 'tiny'} seq {seq} {precision} {mode}: measured peak {measured / 2**20:.2f} MiB, "
              f"predicted {predicted / 2**20:.2f} MiB, error {error:+.1%}")
        assert abs(error) <= 0.15, (mode, measured, predicted)


def test_checkpointing_orders_memory_as_expected_for_aria_25b():
    cfg = build_config(1, preset="aria-25b").model
    peaks = {m: activation_memory(cfg, 65536, 1, m, ep_size=8).peak for m in ("none", "selective", "full")}
    assert peaks["none"] > peaks["selective"] > peaks["full"]


def test_dry_run_prints_the_per_gpu_breakdown():
    result = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "pretrain.py"), "--stage", "1", "--model", "aria-25b", "--dry-run",
         "--world-size", "64", "--ep-size", "8", "--seq-length", "65536", "--micro-batch-size", "1"],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "per-GPU memory at seq 65,536 x micro-batch 1" in out
    for line in ("weights (fp32 parameters)", "gradients (fp32 buffers)", "optimizer (ZeRO-1 shard)",
                 "activations, none", "activations, full", "activations, selective"):
        assert line in out
