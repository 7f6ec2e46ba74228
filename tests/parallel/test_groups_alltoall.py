"""Process groups of the parallel layout, and the all-to-all dispatcher against one rank."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workers  # noqa: E402
from dist_utils import run_world  # noqa: E402

from aria_train.config import ConfigError  # noqa: E402
from aria_train.parallel.groups import init_parallel_groups  # noqa: E402


def test_groups_single_process():
    g = init_parallel_groups(1)
    assert (g.world_size, g.rank, g.ep_size, g.edp_size, g.distributed) == (1, 0, 1, 1, False)
    with pytest.raises(ConfigError, match="ep_size"):
        init_parallel_groups(2)


def test_groups_world4():
    run_world(workers.groups_worker, 4)


@pytest.mark.parametrize(
    "world,cases",
    [
        (2, [(2, "even"), (2, "capacity"), (2, "skewed"), (2, "empty_rank")]),
        (4, [(4, "even"), (2, "even"), (4, "skewed"), (2, "skewed"), (4, "empty_rank"), (2, "capacity")]),
    ],
)
def test_alltoall_matches_single_rank(world, cases):
    """Output, input gradient and weight gradients (summed over ranks; experts over EDP) equal the
    single-rank layer's; a skewed router (all tokens to EP rank 0) and a rank with zero tokens
    neither hang nor differ."""
    run_world(workers.alltoall_worker, world, cases)
