"""Preemption: SIGTERM to the workers (what SLURM does at the time limit), SIGUSR1 through the
SLURM launcher script (the early warning): the run saves at the step it stopped, exits 0, and a
resumed run goes on from the next step."""

import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ops_helpers import (PRETRAIN, ROOT, TINY, child_env, children, exit_status, free_port,  # noqa: E402
                         latest, run, start, stop, torchrun_cmd, train_records, wait_for)

from aria_train.checkpoint import layout  # noqa: E402

ARGS = [*TINY, "--global-batch-size", "4", "--log-interval", "1", "--set", "logging.log_interval=1"]


def test_sigterm_saves_exits_zero_and_resume_continues(tmp_path):
    # As the SLURM templates run it: the same directory for --save and --load (empty at first).
    ckpt, log1, log2 = tmp_path / "ckpt", tmp_path / "log1", tmp_path / "log2"
    cmd = torchrun_cmd(2, PRETRAIN, ["--stage", "1", "--train-iters", "2000", *ARGS,
                                     "--save", ckpt, "--load", ckpt, "--log-dir", log1])
    proc = start(cmd, tmp_path / "run1.out")
    try:
        wait_for(lambda: len(train_records(log1)) >= 3, 90, "3 logged steps", proc)
        workers = children(proc.pid)
        assert len(workers) == 2, workers
        for pid in workers:  # as SLURM does: every task gets the signal
            os.kill(pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp_path / "run1.out").read_text()[-3000:]
    finally:
        stop(proc)
    out = (tmp_path / "run1.out").read_text()
    reason, stopped = exit_status(log1)
    assert reason == "signal", out[-2000:]
    assert f"stopping at step {stopped}: signal" in out
    assert 3 <= stopped < 2000
    assert latest(ckpt) == stopped
    assert layout.is_complete(layout.final_dir(ckpt, stopped))
    assert train_records(log1)[-1]["step"] == stopped

    resumed = run(torchrun_cmd(2, PRETRAIN, ["--stage", "1", "--train-iters", stopped + 2, *ARGS,
                                             "--save", ckpt, "--load", ckpt, "--log-dir", log2]))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    steps = [r["step"] for r in train_records(log2)]
    assert steps == [stopped + 1, stopped + 2]
    assert exit_status(log2) == ("finished", stopped + 2)
    assert latest(ckpt) == stopped + 2


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_through_slurm_launcher_forwards_to_workers(tmp_path, signum):
    """launch/slurm/torchrun_from_slurm.sh on a one-node fake allocation: SIGUSR1 (as `#SBATCH
    --signal=USR1@120` sends it) or SIGTERM (scancel, the time limit) to the script reaches the
    workers through launch/run.py, which survives it; the workers save and all exit 0."""
    from slurm_templates import _write_stubs

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _write_stubs(bin_dir, tmp_path / "job.sbatch")
    ckpt, log_dir = tmp_path / "ckpt", tmp_path / "logs"
    env = child_env(PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_NNODES=1, SLURM_JOB_NODELIST="127.0.0.1",
                    SLURM_JOB_ID=777, SLURM_NODEID=0, GPUS_PER_NODE=2, MASTER_PORT=free_port(),
                    CKPT_DIR=ckpt, LOG_DIR=log_dir)
    cmd = ["bash", str(ROOT / "launch/slurm/torchrun_from_slurm.sh"), "--stage", "1", "--train-iters", "2000", *ARGS]
    proc = start(cmd, tmp_path / "launcher.out", env=env)
    try:
        wait_for(lambda: len(train_records(log_dir)) >= 2, 90, "2 logged steps", proc)
        os.kill(proc.pid, signum)
        assert proc.wait(timeout=60) == 0, (tmp_path / "launcher.out").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            for pid in children(proc.pid):  # torchrun, then its workers
                stop_pids = children(pid) + [pid]
                for p in stop_pids:
                    os.kill(p, signal.SIGKILL)
            proc.kill()
    out = (tmp_path / "launcher.out").read_text()
    name = signal.Signals(signum).name
    assert f"got {name}, forwarding it to launch/run.py" in out
    assert f"launch/run.py: {name}: forwarding it to the workers" in out
    assert out.strip().splitlines()[-1] == f"launch/run.py: stopped on {name}: every worker exited 0"
    reason, stopped = exit_status(log_dir)
    assert reason == "signal", out[-2000:]
    assert latest(ckpt) == stopped
    assert (log_dir / "torchrun" / "node0").is_dir()
