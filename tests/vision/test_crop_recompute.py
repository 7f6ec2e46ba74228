"""vision.activation_checkpointing=crops: the ViT + projector recomputed per group of crops give
the same features and the same gradients as one pass and as per-layer recompute."""

import pytest
import torch

from aria_train.model.config import ModelConfig
from aria_train.model.multimodal import AriaForConditionalGeneration
from aria_train.model.vision_config import ProjectorConfig, VisionConfig


def _model():
    vision = VisionConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, patch_size=14,
                          image_size=140)
    text = ModelConfig(vocab_size=64, hidden_size=48, num_layers=1, num_heads=4, head_dim=12)
    torch.manual_seed(0)
    model = AriaForConditionalGeneration(text, vision, ProjectorConfig(patch_to_query={25: 4, 100: 8}), 5)
    model.init_weights(3)
    return model.train()


@pytest.mark.parametrize("group", [1, 2, 3, 7])
def test_features_and_gradients_match_one_pass(group):
    model = _model()
    gen = torch.Generator().manual_seed(1)
    grid = [(5, 5), (3, 5), (10, 10), (5, 2), (7, 7), (5, 5)]  # mixed sizes and query counts
    patches = torch.randn(sum(h * w for h, w in grid), 3 * 14 * 14, generator=gen)
    results = {}
    for mode in ("none", "layer", "crops"):
        model.vision_cfg.activation_checkpointing = mode
        model.vision_tower.activation_checkpointing = mode
        model.vision_cfg.checkpoint_crops = group
        model.zero_grad(set_to_none=True)
        features = model.image_features(patches, grid)
        weight = torch.randn(features.shape, generator=torch.Generator().manual_seed(2))
        (features * weight).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[mode] = (features.detach(), grads)
    ref_features, ref_grads = results["none"]
    for mode in ("layer", "crops"):
        features, grads = results[mode]
        assert torch.allclose(features, ref_features, atol=1e-6, rtol=1e-5), mode
        assert grads.keys() == ref_grads.keys()
        # fp32 sums over differently grouped rows: equal up to rounding, relative to each gradient
        # (with an absolute floor for the key biases, whose gradient is zero but for rounding)
        for name, grad in grads.items():
            tolerance = 1e-5 * ref_grads[name].abs().max().item() + 1e-6
            assert (grad - ref_grads[name]).abs().max().item() < tolerance, (mode, name)
