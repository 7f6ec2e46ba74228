"""Stage 0's model: packed text tower without cross-talk, global average pooling, heads, and
ViT parameter names that stage 2's model shares."""

import dataclasses
import math

import torch

from aria_train.model.dual_encoder import build_dual_encoder, segment_mean
from aria_train.model.multimodal import build_multimodal_model
from aria_train.model.text_encoder import TextEncoder, TextEncoderConfig
from aria_train.model.vision_config import vision_preset
from aria_train.nn.image_patches import pack_images
from aria_train.train.run_config import build_config

TEXT = TextEncoderConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_length=12)


def test_packed_texts_equal_texts_alone():
    tower = TextEncoder(TEXT, vocab_size=50)
    tower.init_weights(1)
    g = torch.Generator().manual_seed(0)
    texts = [torch.randint(0, 50, (n,), generator=g) for n in (5, 12, 1, 7)]
    packed = tower(torch.cat(texts), [len(t) for t in texts])
    alone = torch.cat([tower(t, [len(t)]) for t in texts])
    assert (packed - alone).abs().max().item() < 1e-5
    changed = [texts[0], texts[1].flip(0), texts[2], texts[3]]  # another text in the pack changes nothing else
    other = tower(torch.cat(changed), [len(t) for t in changed])
    assert torch.allclose(other[:5], packed[:5], atol=1e-6) and torch.allclose(other[17:], packed[17:], atol=1e-6)
    assert not torch.allclose(other[5:17], packed[5:17])


def test_segment_mean_is_global_average_pooling():
    x = torch.arange(12.0).reshape(6, 2)
    assert torch.equal(segment_mean(x, [2, 1, 3]), torch.stack([x[:2].mean(0), x[2], x[3:].mean(0)]))


def test_heads_shapes_and_initial_temperature():
    vision, _ = vision_preset("tiny")
    model = build_dual_encoder(vision, TEXT, vocab_size=50, embed_dim=24, classes={"a": 5, "b": 3}, seed=2)
    g = torch.Generator().manual_seed(3)
    images = [torch.randn(3, 70, 70, generator=g), torch.randn(3, 42, 70, generator=g)]
    patches, grid = pack_images(images, 14)
    pooled = model.pooled_images(patches, grid)
    assert pooled.shape == (2, vision.hidden_size)
    first = model.vision_tower(*pack_images(images[:1], 14)).mean(0)
    assert torch.allclose(pooled[0], first, atol=1e-5)  # mean over that image's own patches only
    assert model.embed_images(patches, grid).shape == (2, 24)
    assert model.embed_texts(torch.tensor([1, 2, 3, 4]), [3, 1]).shape == (2, 24)
    assert model.classify("a", pooled).shape == (2, 5) and model.classify("b", pooled).shape == (2, 3)
    assert math.isclose(model.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)


def test_vision_tower_names_are_stage_2s():
    stage2 = build_config(2)
    model = build_dual_encoder(stage2.vision, TEXT, stage2.model.vocab_size, stage2.model.hidden_size, {},
                               device="meta")
    mm = build_multimodal_model(stage2.model, stage2.vision, stage2.projector, image_token_id=5, device="meta")
    ours = {k: v.shape for k, v in model.state_dict().items() if k.startswith("vision_tower.")}
    theirs = {k: v.shape for k, v in mm.state_dict().items() if k.startswith("vision_tower.")}
    assert ours == theirs and ours


def test_vision_recompute_modes_give_the_same_features_and_gradients():
    vision, _ = vision_preset("tiny")
    g = torch.Generator().manual_seed(4)
    images = [torch.randn(3, 42, 56, generator=g) for _ in range(5)]
    patches, grid = pack_images(images, 14)
    results = {}
    for mode in ("none", "layer", "crops"):
        cfg = dataclasses.replace(vision, activation_checkpointing=mode, checkpoint_crops=2)
        model = build_dual_encoder(cfg, TEXT, vocab_size=50, embed_dim=24, classes={"a": 3}, seed=2)
        model.train()
        calls = []
        # rows through the ViT's last layer, in forward and in any recompute in backward
        model.vision_tower.encoder.layers[-1].register_forward_hook(lambda module, args, out: calls.append(out[0].shape[0]))
        pooled = model.pooled_images(patches, grid)
        model.classify("a", pooled).square().sum().backward()
        if mode == "crops":  # groups of 2, 2 and 1 images (12 patches each), each run again in backward
            assert calls[:3] == [24, 24, 12] and sorted(calls[3:]) == [12, 24, 24]
        else:  # ("layer" recomputes inside the layer; checkpoint's early stop ends it before the hook)
            assert calls == [60]
        results[mode] = (pooled.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    base_pooled, base_grads = results["none"]
    for mode in ("layer", "crops"):
        pooled, grads = results[mode]
        assert (pooled - base_pooled).abs().max().item() < 1e-6, mode
        assert grads.keys() == base_grads.keys()
        assert max((grads[n] - base_grads[n]).abs().max().item() for n in grads) < 1e-5, mode
