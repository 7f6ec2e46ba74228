"""The global-batch InfoNCE on W gloo ranks equals the same loss on one rank over the
concatenated batch (values and gradients within 1e-5), and the loss is CLIP's symmetric
InfoNCE (checked against a plain formula)."""

import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import encoder_workers  # noqa: E402
from spawn_world import run_world  # noqa: E402

from aria_train.train.encoder.losses import global_infonce, logit_scale_value, softmax_classification  # noqa: E402

TOL = 1e-5


def test_single_rank_is_clip_symmetric_infonce():
    problem = encoder_workers.infonce_problem()
    image = F.normalize(problem["image_x"] @ problem["w_image"], dim=-1)
    text = F.normalize(problem["text_x"] @ problem["w_text"], dim=-1)
    logits = math.exp(2.3) * image @ text.T
    targets = torch.arange(len(image))
    expected = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    out = global_infonce(problem["image_x"] @ problem["w_image"], problem["text_x"] @ problem["w_text"],
                         problem["logit_scale"], distributed=False)
    assert abs(out.loss_share.item() - expected.item()) < 1e-6
    assert out.correct.item() == (logits.argmax(-1) == targets).sum().item()


def test_logit_scale_is_clamped_like_clip():
    assert logit_scale_value(torch.tensor([10.0]), 100.0).item() == pytest.approx(100.0)
    assert logit_scale_value(torch.tensor([-1.0]), 100.0).item() == pytest.approx(1.0)
    assert logit_scale_value(torch.tensor([math.log(1 / 0.07)]), 100.0).item() == pytest.approx(1 / 0.07)


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("use_weights", [False, True])
def test_global_batch_matches_concatenated_batch(world, use_weights, tmp_path):
    out_path = str(tmp_path / "result.pt")
    run_world(encoder_workers.infonce_rank, world, out_path, use_weights)
    got = torch.load(out_path)
    want = encoder_workers.infonce_single(use_weights)
    for name, value in want.items():
        assert got[name].shape == value.shape, name
        diff = (got[name] - value).abs().max().item()
        assert diff < TOL, (name, diff)
    # the loss is not trivially small and every gradient is non-zero, so the test can fail
    assert want["loss"].item() > 0.5
    assert all(want[n].abs().max().item() > 1e-3 for n in ("w_image", "w_text", "logit_scale", "image_x"))


def test_softmax_share_is_weighted_mean_cross_entropy():
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 3, 0, 1])
    weights = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    out = softmax_classification(logits, labels, weights, distributed=False)
    expected = F.cross_entropy(logits[weights > 0], labels[weights > 0])
    assert abs(out.loss_share.item() - expected.item()) < 1e-6
    assert out.rows.item() == 5.0
