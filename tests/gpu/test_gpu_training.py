"""Training on one GPU (issue 15): the bf16 layout's loss follows the fp32 layout's, and a run
resumes bit for bit, the CUDA RNG included (the trainer, its callbacks and the checkpointer, in
one process; bodies in gpu_helpers, checked on CPU by tests/train/test_device_helpers.py)."""

import pytest
import torch

import gpu_helpers

CUDA = torch.device("cuda")


def test_bf16_layout_loss_follows_fp32(tmp_path):
    curves = gpu_helpers.loss_curves(CUDA, tmp_path, steps=20)
    worst = max(abs(b / a - 1) for a, b in zip(curves["fp32"], curves["bf16"]))
    print(f"fp32 {curves['fp32'][-1]:.4f} bf16 {curves['bf16'][-1]:.4f}; largest relative difference {worst:.2e}")
    assert worst <= 2e-2
    assert curves["bf16"][-1] < curves["bf16"][0] - 0.5


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_exact_resume_on_one_gpu_cuda_rng_included(tmp_path, precision):
    straight, interrupted, same_rng = gpu_helpers.exact_resume(CUDA, tmp_path, precision)
    assert [m["step"] for m in interrupted] == list(range(1, 7))
    for a, b in zip(straight, interrupted):
        assert (a["loss"], a["grad_norm"]) == (b["loss"], b["grad_norm"]), a["step"]
    assert same_rng
