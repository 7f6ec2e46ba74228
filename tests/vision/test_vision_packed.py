"""The ViT and projector over packed images: packing several images into one sequence gives what
each image gives alone; the attention backends agree; configs validate."""

import pytest
import torch

from aria_train.config import ConfigError
from aria_train.model.vision_config import ProjectorConfig, VisionConfig, vision_preset
from aria_train.model.projector import Projector
from aria_train.model.vision import (
    Segments,
    VisionTransformer,
    bucketed_position_ids,
    pack_images,
    packed_attention,
    patchify,
)

TOL = 1e-5


@pytest.fixture(scope="module")
def tiny():
    vision, projector = vision_preset("tiny")
    torch.manual_seed(0)
    vit = VisionTransformer(vision)
    vit.init_weights(seed=3)
    proj = Projector(vision.hidden_size, 48, vision.num_heads, projector)
    proj.init_weights(seed=3)
    with torch.no_grad():  # make the norms and biases matter too
        for p in list(vit.parameters()) + list(proj.parameters()):
            p.add_(0.05 * torch.randn(p.shape))
    return vit.eval(), proj.eval()


def _images():
    g = torch.Generator().manual_seed(1)
    # three aspect ratios: 5x3, 2x5 and 4x4 patches (the tiny preset's crops are 70 px = 5 patches)
    return [torch.randn(3, 70, 42, generator=g), torch.randn(3, 28, 70, generator=g), torch.randn(3, 56, 56, generator=g)]


def test_packed_equals_one_at_a_time(tiny):
    vit, proj = tiny
    images = _images()
    with torch.no_grad():
        packed = vit.forward_images(images)
        alone = [vit.forward_images([img])[0] for img in images]
        for a, b in zip(packed, alone):
            assert a.shape == b.shape
            assert (a - b).abs().max().item() < TOL
        patches, grid = pack_images(images, 14)
        feats = vit(patches, grid)
        out = proj(feats, grid)
        out_alone = torch.cat([proj(f, [g]) for f, g in zip(alone, grid)])
    assert grid == [(5, 3), (2, 5), (4, 4)]
    assert out.shape == (3 * 4, 48)  # every crop fits the 5x5 square -> 4 queries
    assert (out - out_alone).abs().max().item() < TOL


def test_attention_backends_agree(tiny):
    vit, proj = tiny
    patches, grid = pack_images(_images(), 14)
    with torch.no_grad():
        vit.attention_backend = proj.attention_backend = "loop"
        ref = proj(vit(patches, grid), grid)
        vit.attention_backend = proj.attention_backend = "mask"
        masked = proj(vit(patches, grid), grid)
    vit.attention_backend = proj.attention_backend = "auto"
    assert (ref - masked).abs().max().item() < TOL


def test_packed_attention_matches_reference():
    g = torch.Generator().manual_seed(0)
    seg_q, seg_k = Segments([3, 3, 5]), Segments([4, 7, 4])
    q, k, v = torch.randn(11, 2, 8, generator=g), torch.randn(15, 2, 8, generator=g), torch.randn(15, 2, 8, generator=g)
    out = packed_attention(q, k, v, seg_q, seg_k, backend="loop")
    oq, ok = seg_q.offsets(), seg_k.offsets()
    for i in range(3):
        qs = q[oq[i] : oq[i] + seg_q.lengths[i]].transpose(0, 1)
        ks = k[ok[i] : ok[i] + seg_k.lengths[i]].transpose(0, 1)
        vs = v[ok[i] : ok[i] + seg_k.lengths[i]].transpose(0, 1)
        ref = torch.softmax(qs @ ks.transpose(1, 2) / 8**0.5, -1) @ vs
        assert (out[oq[i] : oq[i] + seg_q.lengths[i]] - ref.transpose(0, 1)).abs().max().item() < TOL


def test_gradients_flow_through_packed_model(tiny):
    vit, proj = tiny
    patches, grid = pack_images(_images(), 14)
    vit.train()
    vit.activation_checkpointing = "layer"
    try:
        proj(vit(patches, grid), grid).square().mean().backward()
    finally:
        vit.activation_checkpointing = "none"
        vit.eval()
    assert vit.embeddings.patch_embedding.weight.grad is not None
    assert vit.embeddings.position_embedding.weight.grad.abs().sum() > 0
    assert vit.post_layernorm.weight.grad is None  # output is taken before post_layernorm
    assert proj.query.grad[:4].abs().sum() > 0 and proj.query.grad[4:].abs().sum() == 0
    vit.zero_grad(set_to_none=True)
    proj.zero_grad(set_to_none=True)


def test_patchify_and_positions():
    img = torch.arange(3 * 28 * 42, dtype=torch.float32).view(3, 28, 42)
    patches, (h, w) = patchify(img, 14)
    assert (h, w) == (2, 3) and patches.shape == (6, 3 * 14 * 14)
    assert torch.equal(patches[4].view(3, 14, 14), img[:, 14:28, 14:28])
    # a full-grid image takes the identity positions; a smaller one is spread over the grid
    assert torch.equal(bucketed_position_ids([(10, 10)], 10), torch.arange(100))
    assert bucketed_position_ids([(5, 2)], 10).view(5, 2).tolist() == [[0, 5], [20, 25], [40, 45], [60, 65], [80, 85]]
    with pytest.raises(ValueError):
        bucketed_position_ids([(11, 2)], 10)


def test_projector_query_counts():
    proj = Projector(32, 16, 2, ProjectorConfig())  # ARIA's {1225: 128, 4900: 256}
    assert proj.num_queries([(35, 35), (24, 35), (35, 20), (70, 41), (36, 10)]) == [128, 128, 128, 256, 256]
    with pytest.raises(ValueError):
        proj.queries_for(71, 3)


def test_config_validation():
    VisionConfig().validate()
    ProjectorConfig().validate(VisionConfig())
    assert ProjectorConfig(patch_to_query={"1225": "128"}).patch_to_query == {1225: 128}
    with pytest.raises(ConfigError, match="vision.num_heads"):
        VisionConfig(num_heads=5).validate()
    with pytest.raises(ConfigError, match="vision.patch_size"):
        VisionConfig(image_size=100).validate()
    with pytest.raises(ConfigError, match="square"):
        ProjectorConfig(patch_to_query={1000: 8}).validate()
    with pytest.raises(ConfigError, match="exceeds"):
        ProjectorConfig().validate(VisionConfig(image_size=490))
    with pytest.raises(ConfigError, match="preset"):
        vision_preset("nope")
