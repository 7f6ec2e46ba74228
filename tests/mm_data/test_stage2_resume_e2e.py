"""A stage-2 run stopped and resumed continues bit for bit: the same losses and the same
samples (image and image-token counts per step) as the run that never stopped."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from launch_runs import pretrain, step_records  # noqa: E402

STEPS = 6


def _args(base: Path, name: str, *extra) -> list:
    return ["--stage", "2", "--train-iters", STEPS, "--global-batch-size", 4, "--set", "train.micro_batch_size=2",
            "--seq-length", 64, "--log-interval", 1, "--set", "train.eval_interval=0",
            "--set", "data.synthetic_samples=64", "--set", f"data.cache_dir={base / 'cache'}",
            "--set", "checkpoint.init_from=", "--log-dir", base / name, "--save", base / f"{name}_ckpt", *extra]


def test_stage2_resume_is_exact(tmp_path):
    pretrain(2, _args(tmp_path, "straight"), tmp_path)
    pretrain(2, _args(tmp_path, "resumed", "--exit-interval", 3), tmp_path)
    result = pretrain(2, _args(tmp_path, "resumed", "--load", tmp_path / "resumed_ckpt"), tmp_path)
    assert "resumed from" in result.stdout and "at step 3" in result.stdout

    straight, resumed = step_records(tmp_path / "straight"), step_records(tmp_path / "resumed")
    assert sorted(straight) == sorted(resumed) == list(range(1, STEPS + 1))
    assert all(straight[s]["image_crops"] > 0 for s in straight)
    for step in range(1, STEPS + 1):
        for key in ("loss", "lm_loss", "balance_loss", "z_loss", "grad_norm", "image_tokens", "image_crops"):
            assert resumed[step][key] == straight[step][key], (step, key)
