"""The activation-memory estimator against the measured CPU peak of a real training step.

Measured: the peak of live CPU tensor bytes (torch.profiler allocator events) during one forward
+ chunked loss + backward of a tiny model, above the state before the step (weights and
pre-allocated fp32 gradient buffers, as the ZeRO-1 optimizer keeps them, already exist; in the
bf16 layout the optimizer itself sets up the bf16 parameters, fp32 masters and main gradients,
and each parameter's bf16 .grad lives until its hook adds it to the main gradient).
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
from aria_train.optim.config import OptimizerConfig
from aria_train.optim.replicated import ReplicatedAdamW
from aria_train.train.loss import chunked_cross_entropy_sum

ROOT = Path(__file__).resolve().parents[2]
# layer-dominated: 4 layers, small vocabulary; loss-dominated: the tiny preset as it is
LAYERS = {"model.num_layers": 4, "model.vocab_size": 256}


def _measure(overrides: dict, mode: str, seq: int, precision: str) -> tuple[int, float]:
    cfg = build_config(1, overrides={**overrides, "model.activation_checkpointing": mode}).model
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    if precision == "bf16":
        optimizer = ReplicatedAdamW(model, OptimizerConfig(), param_dtype=torch.bfloat16)  # noqa: F841 (hooks)
    else:
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
    (LAYERS, 512, "fp32"), (LAYERS, 2048, "fp32"), ({}, 1024, "fp32"), (LAYERS, 2048, "bf16"), ({}, 1024, "bf16"),
], ids=["4layers-v256-seq512-fp32", "4layers-v256-seq2048-fp32", "tiny-seq1024-fp32", "4layers-v256-seq2048-bf16",
        "tiny-seq1024-bf16"])
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
    for line in ("weights (bf16 parameters)", "gradients (fp32 main grads)", "optimizer (ZeRO-1 shard)",
                 "activations, none", "activations, full", "activations, selective"):
        assert line in out


def test_aria_25b_at_64k_with_full_recompute_fits_80_gb_in_the_bf16_layout():
    """Issue 15: bf16 parameters, fp32 main gradients, fp32 masters and moments in ZeRO-1 shards
    (world 64, ep 8, 64K tokens, micro-batch 1, full recompute) fit an 80 GB GPU; the fp32
    layout (fp32 parameters double the weights) does not."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "pretrain.py"), "--stage", "3", "--model", "aria-25b", "--dry-run",
         "--world-size", "64", "--ep-size", "8", "--seq-length", "65536", "--micro-batch-size", "1"],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    full = next(line for line in result.stdout.splitlines() if "activations, full" in line)
    assert full.endswith("GiB: fits"), full
    # 2 B x (dense + ViT + projector + 1/8 of the experts): stage 3 is multimodal
    assert "weights (bf16 parameters)          9.81" in result.stdout
    cfg = build_config(3, preset="aria-25b", overrides={"data.seq_length": 65536, "train.micro_batch_size": 1})
    from aria_train.accounting import count_parameters, memory_per_rank

    counts = count_parameters(build_model(cfg.model, device="meta"), cfg.model)
    for precision, fits in (("bf16", True), ("fp32", False)):
        persistent = memory_per_rank(counts, 64, 8, precision=precision).total
        peak = activation_memory(cfg.model, 65536, 1, "full", ep_size=8, precision=precision).peak
        assert (persistent + peak <= 80e9) == fits, (precision, (persistent + peak) / 2**30)
