"""Runs through launch/run.py with 2 processes: two runs with default settings, one after the other,
write into different run directories and leave each other's checkpoints alone; a second run under
a taken name is refused with one line; resuming a run (from an older checkpoint) drops the
metrics after the resume step, so metrics.jsonl and the heatmap tool see each step once, with the
values of the uninterrupted run."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from expert_heatmap import stats_from_jsonl  # noqa: E402

TINY = ["--seq-length", "32", "--set", "train.micro_batch_size=2", "--global-batch-size", "4",
        "--set", "train.eval_interval=0", "--log-interval", "1"]


def launch(work: Path, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(ROOT / "launch/run.py"), "--standalone", "--nproc_per_node=2",
           str(ROOT / "launch/pretrain.py"), "--stage", "1", *TINY, *map(str, args)]
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def fingerprint(directory: Path) -> dict:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("rundirs")


def test_two_default_runs_do_not_touch_each_other(work):
    ok(launch(work, "--train-iters", "3"))
    [first] = sorted((work / "runs").iterdir())
    before = fingerprint(first)
    assert (first / "checkpoints" / "latest").read_text() == "3\n" and "checkpoints/iter_0000003/.metadata" in before
    out = ok(launch(work, "--train-iters", "2"))
    second = sorted(p for p in (work / "runs").iterdir() if p != first)
    assert len(second) == 1 and second[0].name.startswith("stage1-")
    assert f"run directory runs/{second[0].name}: checkpoints in runs/{second[0].name}/checkpoints" in out
    assert fingerprint(first) == before
    assert (second[0] / "checkpoints" / "latest").read_text() == "2\n"
    assert [r["step"] for r in records(second[0])] == [1, 2]
    assert (second[0] / "exit_status").read_text() == "finished 2\n" and (second[0] / "config.yaml").is_file()


def test_a_taken_run_name_is_refused_and_resuming_sees_each_step_once(work):
    run = work / "runs" / "r"
    ok(launch(work, "--run-name", "r", "--train-iters", "6", "--save-interval", "3"))
    uninterrupted = records(run)
    assert [r["step"] for r in uninterrupted] == [1, 2, 3, 4, 5, 6]
    before = fingerprint(run)

    refused = launch(work, "--run-name", "r", "--train-iters", "6")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        "error: checkpoint.save=runs/r/checkpoints already holds another run's checkpoints (latest: iteration 6); "
        "resume it with --load runs/r/checkpoints, choose another --run-name or --save, or pass --overwrite")
    assert fingerprint(run) == before

    # As after a crash that lost the last checkpoint: resume from step 3 into the same run.
    out = ok(launch(work, "--run-name", "r", "--load", "runs/r/checkpoints/iter_0000003", "--train-iters", "6"))
    assert "runs/r/metrics.jsonl: dropped 3 records after step 3, the step this run resumes from" in out
    resumed = records(run)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(uninterrupted, resumed):
        assert (a["loss"], a["grad_norm"], a["router_counts"]) == (b["loss"], b["grad_norm"], b["router_counts"])
    heatmap = stats_from_jsonl(run / "metrics.jsonl")
    assert heatmap["source"].endswith("(steps 1-6, 6 windows)")
