"""Resharding end to end through launch/pretrain.py: a checkpoint written at world 4 / ep-size 2
resumes at world 2 / ep 1 and at world 4 / ep 4, and the next steps' losses equal the original
layout's (step 3 checks the resharded weights, step 4 also the resharded optimizer state)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ckpt_workers as workers  # noqa: E402


def _args(base: Path, log: str, *extra) -> list:
    return ["--stage", "1", "--set", "train.micro_batch_size=1", "--global-batch-size", "4",
            "--seq-length", "32", "--log-interval", "1", "--set", "train.eval_interval=0",
            "--set", f"data.cache_dir={base / 'data_cache'}", "--log-dir", str(base / log),
            "--train-iters", "4", *extra]


def _losses(base: Path, log: str) -> dict:
    losses = {}
    for line in (base / log / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            losses[record["step"]] = record["loss"]
    return losses


def _ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    base = tmp_path_factory.mktemp("reshard_e2e")
    args = _args(base, "w4ep2", "--ep-size", "2", "--save", base / "save", "--save-interval", "2")
    _ok(workers.pretrain(4, args, base))
    return base, _losses(base, "w4ep2")


@pytest.mark.parametrize("world,ep", [(2, 1), (4, 4)])
def test_reshard_resume(original, world, ep):
    base, reference = original
    assert sorted(reference) == [1, 2, 3, 4]
    log = f"w{world}ep{ep}"
    args = _args(base, log, "--ep-size", ep, "--load", base / "save" / "iter_0000002")
    result = _ok(workers.pretrain(world, args, base))
    assert "resharded from world 4 / ep 2" in result.stdout
    losses = _losses(base, log)
    assert sorted(losses) == [3, 4]
    for step in (3, 4):
        assert losses[step] == pytest.approx(reference[step], rel=1e-5), (step, losses[step], reference[step])
