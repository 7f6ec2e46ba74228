"""The four stages chain: each is a run of its own (runs/<curriculum>/stageN) and starts from the
previous stage's run (its final checkpoint, weights only), stage 3 switches RoPE to base 5M (in
the built model and in its checkpoint metadata), and stage 4 trains on chat data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch_runs import REPO, step_records  # noqa: E402

from aria_train.eval.trained_model import load_trained_model  # noqa: E402


@pytest.fixture(scope="module")
def curriculum(tmp_path_factory):
    work = tmp_path_factory.mktemp("curriculum")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", NPROC="2", CURRICULUM="c",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(
        ["bash", str(REPO / "launch" / "curriculum.sh"), "--train-iters", "3", "--log-interval", "1",
         "--set", "train.eval_interval=0",
         "--set", "data.synthetic_samples=64", "--set", "train.global_batch_size=4",
         "--set", "train.micro_batch_size=2", "--set", "schedule.warmup_iters=1"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return work, result.stdout


def test_each_stage_starts_from_the_previous_final_checkpoint(curriculum):
    work, log = curriculum
    assert "curriculum c: runs/c/stage1 ... stage4" in log
    for stage in (2, 3, 4):
        previous = f"runs/c/stage{stage - 1}"
        assert f"stage {stage} starts from {previous} (weights only; fresh optimizer, step 0)" in log
        assert f"loaded weights from {previous}/checkpoints/iter_0000003 (iteration 3)" in log
    for stage in (1, 2, 3, 4):
        assert f"run directory runs/c/stage{stage}: checkpoints in runs/c/stage{stage}/checkpoints" in log
        assert sorted(step_records(work / f"runs/c/stage{stage}")) == [1, 2, 3]
        assert (work / f"runs/c/stage{stage}/checkpoints/latest").read_text().strip() == "3"
    assert sorted(p.name for p in (work / "runs").iterdir()) == ["c"]


def test_stage3_uses_rope_base_5m(curriculum):
    work, log = curriculum
    meta = json.loads((work / "runs/c/stage3/checkpoints/iter_0000003/metadata.json").read_text())
    assert meta["rope_base"] == 5_000_000.0
    stage2 = json.loads((work / "runs/c/stage2/checkpoints/iter_0000003/metadata.json").read_text())
    assert stage2["rope_base"] == 100_000.0
    assert "checkpoint weights were trained with RoPE base 100000; this run uses 5e+06" in log
    model, cfg = load_trained_model(str(work / "runs/c/stage3"))
    rope = model.language_model.rope
    assert rope.base == 5_000_000.0
    head_dim = cfg.model.head_dim
    expected = 1.0 / (5_000_000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    assert torch.equal(rope.inv_freq, expected)


def test_stage4_trains_on_chat_data_with_annealed_lr(curriculum):
    work, log = curriculum
    assert "data: synthetic demo shards data_cache/synthetic_chat_64" in log
    records = step_records(work / "runs/c/stage4")
    assert records[3]["lr"] < records[2]["lr"]
    assert all(r["image_crops"] > 0 for r in records.values())
