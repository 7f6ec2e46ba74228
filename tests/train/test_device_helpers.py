"""The device tests' bodies (tests/gpu/gpu_helpers.py) run on CPU, so the logic of the GPU suite is
checked where no GPU is lent: the trainer with its callbacks resumes bit for bit in one process,
the device's RNG included, in both precision layouts; the bf16 layout's loss follows fp32."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gpu"))
import gpu_helpers  # noqa: E402


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_in_process_trainer_resumes_exactly_with_the_rng(tmp_path, precision):
    straight, interrupted, same_rng = gpu_helpers.exact_resume(torch.device("cpu"), tmp_path, precision)
    assert [m["step"] for m in interrupted] == list(range(1, 7))
    for a, b in zip(straight, interrupted):
        assert (a["loss"], a["grad_norm"]) == (b["loss"], b["grad_norm"]), a["step"]
    assert same_rng


def test_the_resume_check_can_fail(tmp_path, monkeypatch):
    """Without the RNG in the checkpoint the batches after the resume differ."""
    from aria_train.checkpoint import state

    monkeypatch.setattr(state.ProcessRNG, "load_state_dict", lambda self, s: None)
    straight, interrupted, same_rng = gpu_helpers.exact_resume(torch.device("cpu"), tmp_path, "fp32")
    assert straight[3]["loss"] != interrupted[3]["loss"] and not same_rng
