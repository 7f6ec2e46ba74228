"""--dry-run --model aria-25b for every stage: what the stage trains (decoder, ViT, projector and
total), its sequence length and RoPE base, and "fits" for the recipe's layout at the world size
it states; a layout that does not fit names the smallest change that does."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DECODER, VIT, PROJECTOR = 24_869_091_840, 417_792_240, 20_427_136


def run_launcher(*args):
    return subprocess.run([sys.executable, str(ROOT / "launch" / "pretrain.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def row(label: str, value) -> str:
    return f"  {label:<27}{value:>17}"


# stage -> (sequence length, RoPE base, multimodal, stated world size)
STAGES = {1: (8192, 100_000, False, 24), 2: (8192, 100_000, True, 32), 3: (65536, 5_000_000, True, 96),
          4: (65536, 5_000_000, True, 96)}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_aria_25b_recipe_dry_run(stage):
    seq, rope, multimodal, world = STAGES[stage]
    result = run_launcher("--stage", stage, "--model", "aria-25b", "--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    print(out)
    assert row("sequence length", f"{seq:,}") in out
    assert row("RoPE base", f"{rope:,}") in out
    assert row("decoder", f"{DECODER:,}") in out
    if multimodal:
        assert row("vision tower (ViT)", f"{VIT:,}") in out and row("projector", f"{PROJECTOR:,}") in out
        assert row("total", "25,307,311,216") in out
        assert "vision side, worst micro-batch: every token an image token" in out
    else:
        assert row("total", f"{DECODER:,}") in out and "vision tower" not in out
    assert f"parallel layout                world {world}, ep-size" in out
    assert f"GiB at world {world}: fits" in out
    assert row("per text token", "4,115,151,360") in out
    assert "estimated time on H100 (989 TFLOP/s dense bf16) at 30% MFU" in out


def test_a_layout_that_does_not_fit_names_the_smallest_change():
    # bf16 layout (train.precision auto = bf16 on the GPU): stage 3 at ep 8 fits with full recompute only
    result = run_launcher("--stage", 3, "--model", "aria-25b", "--dry-run", "--ep-size", 8,
                          "--set", "model.activation_checkpointing=selective")
    assert result.returncode == 0, result.stderr
    assert "at world 96: does NOT fit" in result.stdout
    assert "  smallest change that fits: --set model.activation_checkpointing=full -> 63.63 GiB" in result.stdout
    result = run_launcher("--stage", 1, "--model", "aria-25b", "--dry-run", "--world-size", 64,
                          "--set", "model.activation_checkpointing=none")
    assert "  smallest change that fits: --set model.activation_checkpointing=selective -> 42.98 GiB" in result.stdout
    assert "    or: --set model.activation_checkpointing=full -> 36.40 GiB" in result.stdout


def test_full_fine_tuning_on_one_node_points_to_freezing_or_more_gpus():
    result = run_launcher("--stage", 4, "--model", "aria-25b-finetune", "--dry-run", "--set", "train.freeze=[]")
    out = result.stdout
    assert "no change of ep-size, recompute or micro-batch fits at world 8" in out
    assert "more GPUs: this layout fits from --world-size 16 (torchrun over 16 GPUs)" in out
    assert "fine-tuning at world 8: --set train.freeze=[routed_experts]" in out
    recipe = run_launcher("--stage", 4, "--model", "aria-25b-finetune", "--dry-run").stdout
    assert row("trainable", "2,406,411,376") in recipe  # 25,307,311,216 - 22,900,899,840
    assert "GiB at world 8: fits" in recipe


def test_one_gpu_fine_tuning_fits_in_the_bf16_layout_and_not_in_fp32():
    out = run_launcher("--stage", 4, "--model", "aria-25b-finetune-1gpu", "--dry-run").stdout
    assert "at world 1: fits" in out  # 2-byte parameters: 47.14 GiB of weights
    assert row("trainable", f"{VIT + PROJECTOR:,}") in out
    out = run_launcher("--stage", 4, "--model", "aria-25b-finetune-1gpu", "--dry-run",
                       "--set", "train.precision=fp32").stdout
    assert "at world 1: does NOT fit" in out
    assert "nothing fits: persistent state 99.17 GiB per GPU (train.precision=bf16 halves the weights)" in out


def test_unknown_model_and_world_size_errors():
    result = run_launcher("--stage", 2, "--model", "aria-99b", "--dry-run")
    assert result.returncode == 2
    assert "--model 'aria-99b' is neither a model preset (tiny, aria-25b) nor a recipe of stage 2 (aria-25b, imp_options)" in result.stderr
    result = run_launcher("--stage", 3, "--model", "aria-25b", "--dry-run", "--world-size", 100)
    assert result.returncode == 2 and "parallel.ep_size=32 does not divide --world-size 100" in result.stderr
