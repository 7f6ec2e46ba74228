"""In-process checks of the loop's small parts: the stop controller, the step timer, the metrics
logger (console line, JSONL, what wandb gets, exit_status)."""

import json
import os
import signal
import time

import pytest
import torch

from aria_train.parallel.groups import ParallelGroups
from aria_train.train.config import LoggingConfig, TrainConfig
from aria_train.train.metrics import MetricsLogger, console_line
from aria_train.train.step_timer import StepTimer
from aria_train.train.stopping import StopController


def test_stop_controller_signal_and_duration():
    previous = signal.getsignal(signal.SIGUSR1)
    stopper = StopController(TrainConfig(exit_signals=["SIGUSR1"]), torch.device("cpu"))
    try:
        assert stopper.agreed_reason(ParallelGroups()) is None
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stopper.agreed_reason(ParallelGroups()) == "signal"
    finally:
        stopper.restore()
    assert signal.getsignal(signal.SIGUSR1) == previous
    stopper = StopController(TrainConfig(exit_signals=[], exit_duration_mins=0.0001), torch.device("cpu"))
    time.sleep(0.01)
    assert stopper.agreed_reason(ParallelGroups()) == "exit-duration"


def test_step_timer_phases_and_other_add_up_to_the_step():
    timer = StepTimer(torch.device("cpu"))
    timer.reset()
    for _ in range(2):
        with timer.phase("forward"):
            time.sleep(0.01)
    time.sleep(0.01)  # outside any phase: "other"
    step = timer.summary()
    assert step["peak_memory_gib"] > 0
    summary = timer.window_summary()
    assert summary["step_time_s"] == step["step_time_s"]
    assert summary["time_forward_s"] >= 0.02
    assert summary["time_other_s"] >= 0.01
    assert summary["time_forward_s"] + summary["time_other_s"] == pytest.approx(summary["step_time_s"])
    with pytest.raises(RuntimeError):
        with timer.phase("optimizer"):
            raise RuntimeError("boom")
    assert timer.current == "optimizer"  # where it failed, for the error message
    timer.reset()
    assert timer.current is None


def test_step_timer_window_is_the_mean_of_its_steps():
    timer = StepTimer(torch.device("cpu"))
    steps = []
    for pause in (0.01, 0.03):
        timer.reset()
        with timer.phase("forward"):
            time.sleep(pause)
        steps.append(timer.summary()["step_time_s"])
    window = timer.window_summary()
    assert window["step_time_s"] == pytest.approx(sum(steps) / 2)
    assert window["time_forward_s"] >= 0.02  # (0.01 + 0.03) / 2
    assert window["time_forward_s"] + window["time_other_s"] == pytest.approx(window["step_time_s"])
    assert timer.window_summary() == {"time_other_s": 0.0, "step_time_s": 0.0}  # a new window


def test_metrics_logger_console_jsonl_wandb_and_exit_status(tmp_path, capsys):
    logger = MetricsLogger(LoggingConfig(log_dir=str(tmp_path)), rank=0, run_config={"stage": 1})
    logger.start(0)
    assert (tmp_path / "config.yaml").read_text() == "stage: 1\n"
    logged = []

    class FakeWandb:
        def log(self, record, step):
            logged.append((step, record))

        def finish(self):
            pass

    logger._wandb = FakeWandb()
    metrics = {"step": 3, "loss": 2.5, "tokens_per_s": 1000.0, "tokens_per_s_per_rank": 500.0, "mfu": 0.41,
               "step_time_s": 0.5, "time_data_s": 0.01, "time_forward_s": 0.2, "time_backward_s": 0.2,
               "time_grad_sync_wait_s": 0.04, "time_optimizer_s": 0.03, "time_other_s": 0.02,
               "peak_memory_gib": 1.5, "skipped_steps": 2, "router_counts": {"tokens_per_expert": [[1, 2]]},
               "console_extras": "route worst L0 max/mean 1.33 cv 0.33", "train_iters": 40, "elapsed_s": 61.4,
               "eta_s": 3725.0}
    logger.log(metrics)
    line = capsys.readouterr().out.strip()
    assert line == ("step 3/40 | loss 2.5000 | tok/s 1000 | tok/s/gpu 500 | mfu 41.0% | time 0.50s [data 0.01 fwd "
                    "0.20 bwd 0.20 sync 0.04 opt 0.03 other 0.02] | elapsed 1:01 eta 1:02:05 | mem 1.50GiB | "
                    "skipped 2 | route worst L0 max/mean 1.33 cv 0.33") == console_line(metrics)
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert record["router_counts"] == {"tokens_per_expert": [[1, 2]]} and "console_extras" not in record
    step, wandb_record = logged[0]
    assert step == 3 and "router_counts" not in wandb_record and wandb_record["mfu"] == 0.41
    logger.write_exit_status("signal", 3)
    assert (tmp_path / "exit_status").read_text() == "signal 3\n"
    logger.close()
    # other ranks write nothing
    other = MetricsLogger(LoggingConfig(log_dir=str(tmp_path / "r1")), rank=1)
    other.log(metrics)
    other.write_exit_status("signal", 3)
    assert not (tmp_path / "r1").exists()
