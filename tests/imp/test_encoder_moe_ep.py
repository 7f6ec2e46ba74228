"""Expert parallelism applies to the encoder's experts as to the decoder's: at EP 2 and 4 (gloo)
the tower with expert-choice (and top-k) MoE in its last half gives each rank the features and,
summed over ranks, the gradients of one process running every rank's media through the full
tower. Expert choice takes the top-C over the tokens each rank holds, so the single-process
reference encodes each rank's micro-batch on its own (the same data layout). A rank without
media still joins every all-to-all."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import imp_workers  # noqa: E402


@pytest.mark.parametrize("world,cases", [
    (2, [(2, "expert_choice", -1), (2, "expert_choice", 1), (2, "topk", -1)]),
    (4, [(4, "expert_choice", -1), (2, "expert_choice", 3), (4, "topk", 2)]),
])
def test_encoder_moe_under_expert_parallelism_equals_one_rank(world, cases):
    imp_workers.run_world(imp_workers.encoder_ep_worker, world, cases)


def test_a_text_only_rank_runs_the_encoder_for_its_peers():
    """The multimodal model at EP 2: rank 1's micro-batch has no images, its tower still joins
    every all-to-all (forward and backward); losses and gradients equal one process."""
    imp_workers.run_world(imp_workers.multimodal_empty_rank_worker, 2)
