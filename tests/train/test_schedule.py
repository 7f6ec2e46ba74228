import math

import pytest

from aria_train.optim.config import OptimizerConfig
from aria_train.train.config import ScheduleConfig
from aria_train.train.schedule import learning_rate

OPT = OptimizerConfig(lr=1.0, min_lr=0.1)


def test_warmup_then_cosine_reaches_min_lr():
    sched = ScheduleConfig(style="cosine", warmup_iters=4)
    assert learning_rate(0, 20, OPT, sched) == pytest.approx(0.25)
    assert learning_rate(3, 20, OPT, sched) == pytest.approx(1.0)
    assert learning_rate(4, 20, OPT, sched) == pytest.approx(1.0)
    midpoint = 4 + 8
    assert learning_rate(midpoint, 20, OPT, sched) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 2)))
    assert learning_rate(20, 20, OPT, sched) == pytest.approx(0.1)


def test_wsd_is_flat_then_decays_linearly():
    sched = ScheduleConfig(style="wsd", warmup_iters=2, wsd_decay_fraction=0.5)
    assert learning_rate(5, 20, OPT, sched) == pytest.approx(1.0)
    assert learning_rate(9, 20, OPT, sched) == pytest.approx(1.0)
    assert learning_rate(15, 20, OPT, sched) == pytest.approx(1.0 - 0.9 * 0.5)
    assert learning_rate(20, 20, OPT, sched) == pytest.approx(0.1)


def test_schedule_depends_on_full_run_length_only():
    sched = ScheduleConfig(style="cosine", warmup_iters=2)
    assert learning_rate(7, 40, OPT, sched) != learning_rate(7, 20, OPT, sched)
