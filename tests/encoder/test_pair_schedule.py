"""The alternating schedule visits pairs in proportion to their weights, and a schedule restored
from its state continues the same sequence of pairs."""

import collections

import pytest

from aria_train.data.encoder.schedule import PairSchedule
from aria_train.data.errors import DataError

WEIGHT_SETS = [[1.0, 1.0], [3.0, 1.0, 1.0], [0.5, 0.2, 0.2, 0.1], [7.0, 2.0, 1.0]]


@pytest.mark.parametrize("kind", ["weighted_round_robin", "sampled"])
@pytest.mark.parametrize("weights", WEIGHT_SETS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_visits_follow_weights(kind, weights, seed):
    draws = 10_000
    schedule = PairSchedule(weights, kind, seed=seed)
    counts = collections.Counter(schedule.next() for _ in range(draws))
    assert set(counts) == set(range(len(weights)))
    total = sum(weights)
    for pair, weight in enumerate(weights):
        share = counts[pair] / draws
        assert abs(share - weight / total) <= 0.02, (pair, share, weight / total)
        if kind == "weighted_round_robin":  # deterministic: exact to within one visit
            assert abs(counts[pair] - draws * weight / total) <= 1.0


def test_round_robin_interleaves():
    schedule = PairSchedule([2.0, 1.0, 1.0])
    assert [schedule.next() for _ in range(8)] == [0, 1, 2, 0, 0, 1, 2, 0]


def test_sampled_depends_on_seed():
    sequences = []
    for seed in (0, 1):
        schedule = PairSchedule([1, 1], "sampled", seed=seed)
        sequences.append([schedule.next() for _ in range(50)])
    assert sequences[0] != sequences[1]


@pytest.mark.parametrize("kind", ["weighted_round_robin", "sampled"])
def test_resume_continues_the_sequence(kind):
    weights = [0.5, 0.3, 0.2]
    straight = PairSchedule(weights, kind, seed=7)
    expected = [straight.next() for _ in range(1000)]
    first = PairSchedule(weights, kind, seed=7)
    head = [first.next() for _ in range(377)]
    state = first.state_dict()
    resumed = PairSchedule(weights, kind, seed=7)
    resumed.load_state_dict(state)
    assert head + [resumed.next() for _ in range(623)] == expected


def test_state_of_another_schedule_is_refused():
    state = PairSchedule([1, 2], "sampled", seed=1).state_dict()
    with pytest.raises(DataError, match="pair schedule"):
        PairSchedule([1, 2], "weighted_round_robin", seed=1).load_state_dict(state)
    with pytest.raises(DataError, match="weights must be positive"):
        PairSchedule([1, 0])
