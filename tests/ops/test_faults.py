"""Faults: non-finite steps are skipped and counted, K in a row stop the run with one clear line
and the last good checkpoint intact; a hung collective times out with a message naming it.
Faults are injected by tests/ops/fault_driver.py (monkeypatching; no hook in the code)."""

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ops_helpers import FAULT_DRIVER, TINY, child_env, exit_status, latest, run, torchrun_cmd, train_records  # noqa: E402

from aria_train.checkpoint import layout  # noqa: E402

ARGS = [*TINY, "--global-batch-size", "4", "--log-interval", "1"]


def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(tmp_path):
    ckpt, log_dir = tmp_path / "ckpt", tmp_path / "log"
    # Steps 1-3 are good (checkpoint at 2), steps >= 4 have a NaN loss; K = 3 in a row -> stop at 6.
    # The periodic save due at step 4 and 6 falls inside the streak and must not replace step 2.
    result = run(torchrun_cmd(2, FAULT_DRIVER, ["--stage", "1", "--train-iters", "20", *ARGS,
                                                "--save", ckpt, "--save-interval", "2", "--log-dir", log_dir,
                                                "--set", "train.max_nonfinite_steps=3"]),
                 env=child_env(ARIA_TEST_FAULT="nan:4"))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: 3 consecutive non-finite steps up to step 6 (train.max_nonfinite_steps=3); "
                      "stopping without saving (the last good checkpoint is kept)"], result.stderr[-3000:]
    assert "step 4: non-finite loss or gradient norm, update skipped (1 in a row, 1 in all)" in result.stdout
    records = train_records(log_dir)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]  # step 6 raised before logging
    assert [r["skipped_steps"] for r in records] == [0, 0, 0, 1, 2]
    assert [r["skipped"] for r in records] == [False, False, False, True, True]
    assert all(math.isfinite(r["loss"]) for r in records[:3])
    assert not math.isfinite(records[3]["loss"])
    assert latest(ckpt) == 2
    assert [it for it, _ in layout.list_complete(ckpt)] == [2]
    assert exit_status(log_dir) == ("nonfinite", 6)


def test_hung_collective_times_out_with_a_message_naming_it(tmp_path):
    # Rank 1 sleeps 8 s in step 2's forward; rank 0 waits in the next collective (timeout 3 s).
    result = run(torchrun_cmd(2, FAULT_DRIVER, ["--stage", "1", "--train-iters", "4", *ARGS,
                                                "--log-dir", tmp_path / "log", "--save", tmp_path / "ckpt",
                                                "--set", "parallel.timeout_minutes=0.05"]),
                 env=child_env(ARIA_TEST_FAULT="hang:2:1:8"), timeout=90)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors, result.stderr[-3000:]
    assert errors[0].startswith("error: collective timed out after 3 s during "), errors
    assert "at step 2 (rank 0)" in errors[0]
    print(errors[0])
