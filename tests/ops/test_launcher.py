"""launch/run.py (torchrun with the root cause last) with 2 worker processes: the LAST line of the
output is the one-line cause for a config error, a missing data prefix, a full disk at start-up
and during a save, and an unexpected exception; a SIGTERM that saved exits 0."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ops_helpers import (FAULT_DRIVER, PRETRAIN, ROOT, TINY, WORKDIR, child_env, exit_status, latest,  # noqa: E402
                         start, stop, train_records, wait_for)

from aria_train.checkpoint import layout  # noqa: E402

LAUNCHER = ROOT / "launch" / "run.py"
ARGS = [*TINY, "--global-batch-size", "4", "--log-interval", "1"]


def launch(script: Path, args: list, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(LAUNCHER), "--standalone", "--nproc_per_node=2",
           str(script), *map(str, args)]
    return subprocess.run(cmd, cwd=WORKDIR, env=env or child_env(), capture_output=True, text=True, timeout=timeout)


def last_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return lines[-1]


@pytest.fixture
def tmpfs(tmp_path):
    """A 10 MiB tmpfs (room for one tiny checkpoint, ~6.3 MiB, not two); skipped where mounting
    is not allowed."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_config_error_is_the_last_line():
    result = launch(PRETRAIN, ["--stage", "1", "--set", "model.moe.top_k=99"])
    assert result.returncode == 2
    assert last_line(result) == "error: model.moe.top_k=99 exceeds model.moe.num_experts=16"
    assert "Traceback" not in result.stdout + result.stderr


def test_missing_data_prefix_is_the_last_line(tmp_path):
    prefix = tmp_path / "corpus"
    result = launch(PRETRAIN, ["--stage", "1", *ARGS, "--data-path", prefix, "--run-name", f"missing-{os.getpid()}"])
    assert result.returncode == 2
    assert last_line(result) == f"error: data prefix {prefix}: {prefix}.idx not found"


def test_no_room_for_a_checkpoint_stops_before_training(tmp_path):
    save = tmp_path / "ckpt"
    result = launch(FAULT_DRIVER, ["--stage", "1", *ARGS, "--save", save, "--log-dir", tmp_path / "log"],
                    env=child_env(ARIA_TEST_FAULT="disk-free:1000"))
    assert result.returncode == 2
    assert last_line(result) == (f"error: checkpoint.save={save}: 1000 B free on its filesystem, one checkpoint "
                                 "needs 5.9 MiB (weights + optimizer state); free some space or save elsewhere")
    assert not (tmp_path / "log" / "metrics.jsonl").exists() and not save.exists()


def test_unwritable_save_stops_before_training(tmp_path):
    (tmp_path / "file").write_text("")
    result = launch(PRETRAIN, ["--stage", "1", *ARGS, "--save", tmp_path / "file" / "ckpt",
                               "--log-dir", tmp_path / "log"])
    assert result.returncode == 2
    assert last_line(result) == f"error: checkpoint.save={tmp_path}/file/ckpt is not writable: Not a directory"
    assert not (tmp_path / "log").exists()


def _check_failed_save(result, save: Path):
    assert result.returncode == 2, result.stderr[-3000:]
    assert last_line(result) == (f"error: checkpoint save at step 4 failed under {save}: no space left on device; "
                                 "latest still names iteration 2")
    assert latest(save) == 2
    assert sorted(p.name for p in save.iterdir()) == ["iter_0000002", "latest"]  # the partial save is gone
    assert layout.is_complete(save / "iter_0000002")


def test_disk_full_during_a_save_keeps_latest(tmp_path):
    save = tmp_path / "ckpt"
    result = launch(FAULT_DRIVER, ["--stage", "1", *ARGS, "--train-iters", "6", "--save-interval", "2", "--save", save,
                                   "--log-dir", tmp_path / "log"], env=child_env(ARIA_TEST_FAULT="enospc:4:1"))
    _check_failed_save(result, save)
    assert exit_status(tmp_path / "log") == ("error", 4)


def test_a_real_full_disk_during_a_save(tmp_path, tmpfs):
    save = tmpfs / "ckpt"
    result = launch(PRETRAIN, ["--stage", "1", *ARGS, "--train-iters", "6", "--save-interval", "2", "--save", save,
                               "--log-dir", tmp_path / "log"])
    _check_failed_save(result, save)


def test_unexpected_error_names_the_rank_and_the_exception(tmp_path):
    result = launch(FAULT_DRIVER, ["--stage", "1", *ARGS, "--train-iters", "4", "--save", "", "--log-dir", tmp_path],
                    env=child_env(ARIA_TEST_FAULT="raise:2:1"))
    assert result.returncode == 1
    assert last_line(result) == "error: rank 1 failed: RuntimeError: injected fault (traceback above)"
    assert "Traceback (most recent call last)" in result.stderr  # the worker's own, above


def test_sigterm_saves_and_every_process_exits_zero(tmp_path):
    save, log = tmp_path / "ckpt", tmp_path / "log"
    cmd = [sys.executable, str(LAUNCHER), "--standalone", "--nproc_per_node=2",
           str(PRETRAIN), "--stage", "1", *map(str, ARGS), "--train-iters", "2000", "--save", str(save),
           "--log-dir", str(log)]
    proc = start(cmd, tmp_path / "out.txt")
    try:
        wait_for(lambda: len(train_records(log)) >= 3, 120, "3 logged steps", proc)
        os.kill(proc.pid, signal.SIGTERM)  # the launcher only, as `kill PID` or scancel of the step
        assert proc.wait(timeout=90) == 0, (tmp_path / "out.txt").read_text()[-3000:]
    finally:
        stop(proc)
    out = (tmp_path / "out.txt").read_text()
    reason, stopped = exit_status(log)
    assert reason == "signal" and latest(save) == stopped
    assert out.strip().splitlines()[-1] == "launch/run.py: stopped on SIGTERM: every worker exited 0"
    assert "SignalException" not in out
