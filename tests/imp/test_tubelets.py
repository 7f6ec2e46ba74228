"""Video tubelets (vision.patch: tubelet) and IMP's factorised, dilated positions
(vision.position_embedding: factorized): token counts, the Conv3d they are, images as one-frame
videos repeated f times, and the exact position rows."""

import pytest
import torch
import torch.nn.functional as F

from aria_train.config import ConfigError
from aria_train.model.vision import VisionTransformer
from aria_train.model.vision_config import VisionConfig
from aria_train.model.vision_positions import dilated_positions, factorized_position_ids
from aria_train.nn.image_patches import patchify, patchify_video
from aria_train.nn.media import MediaBatch
from aria_train.train.run_config import build_config


def _tower(**kw):
    cfg = VisionConfig(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=24, patch_size=16, image_size=128,
                       patch="tubelet", tubelet_frames=4, max_frames=16, position_embedding="factorized", **kw)
    tower = VisionTransformer(cfg).double()
    tower.init_weights(0)
    return tower


def test_a_16_frame_video_and_an_image_give_imps_token_counts():
    H, W = 64, 48
    video = torch.rand(16, 3, H, W, dtype=torch.float64)
    tubelets, grid3 = patchify_video(video, 4, 16)
    assert grid3 == (16 // 4, H // 16, W // 16) and tubelets.shape == (4 * 4 * 3, 3 * 4 * 16 * 16)
    image = torch.rand(3, H, W, dtype=torch.float64)
    patches, grid = patchify(image, 16)
    assert grid == (H // 16, W // 16) and patches.shape[0] == 12
    tower = _tower()
    out = tower.encode(MediaBatch(patches, [grid], tubelets, [grid3], media_order=["video", "image"]))
    assert out.lengths == [48, 12] and out.features.shape == (60, 16)


def _without_positions(embeddings, x, grid3):
    return x - embeddings.factorized_positions(grid3, x.device)


def test_tubelets_are_a_conv3d_and_an_image_is_a_video_of_f_equal_frames():
    tower = _tower()
    emb = tower.embeddings
    video = torch.rand(8, 3, 32, 48, dtype=torch.float64)
    tubelets, grid3 = patchify_video(video, 4, 16)
    conv = F.conv3d(video.permute(1, 0, 2, 3).unsqueeze(0), emb.patch_embedding.weight, emb.patch_embedding.bias,
                    stride=(4, 16, 16))  # [1, D, t, h, w]
    expected = conv[0].permute(1, 2, 3, 0).reshape(-1, 16)
    torch.testing.assert_close(_without_positions(emb, emb.embed_videos(tubelets, [grid3]), [grid3]), expected)

    image = torch.rand(3, 32, 48, dtype=torch.float64)
    patches, (h, w) = patchify(image, 16)
    tiled = image.unsqueeze(1).expand(3, 4, 32, 48).unsqueeze(0)  # the image repeated over f = 4 frames
    conv = F.conv3d(tiled, emb.patch_embedding.weight, emb.patch_embedding.bias, stride=(4, 16, 16))
    expected = conv[0].permute(1, 2, 3, 0).reshape(-1, 16)
    torch.testing.assert_close(_without_positions(emb, emb.embed_images(patches, [(h, w)]), [(1, h, w)]), expected)


def test_dilated_positions_take_every_bucket_or_every_other():
    B = 8
    assert dilated_positions(B, B).tolist() == [0, 1, 2, 3, 4, 5, 6, 7]  # P = B
    assert dilated_positions(B // 2, B).tolist() == [0, 2, 4, 6]  # P = B / 2: stride 2
    assert dilated_positions(4, 16).tolist() == [0, 4, 8, 12]
    assert dilated_positions(3, 8).tolist() == [0, 2, 5]  # floor(i * 8 / 3)
    with pytest.raises(ValueError, match="9 patches along an axis do not fit its 8 position buckets"):
        dilated_positions(9, 8)


def test_factorized_rows_and_their_sum():
    t, h, w = factorized_position_ids([(2, 2, 4), (1, 4, 2)], 4, 8, 4)
    assert t.tolist() == [0] * 8 + [1] * 8 + [0] * 8
    assert h.tolist() == [0, 0, 0, 0, 2, 2, 2, 2] * 2 + [0, 0, 1, 1, 2, 2, 3, 3]  # 2 of 4 buckets: stride 2
    assert w.tolist() == [0, 2, 4, 6] * 4 + [0, 4] * 4  # 4 of 8 buckets: stride 2; 2 of 8: stride 4
    emb = _tower().embeddings
    grid3 = [(3, 2, 8)]  # 8 of 8 width buckets (128 px / 16), 2 of 8 height buckets
    pos = emb.factorized_positions(grid3, "cpu")
    rows = factorized_position_ids(grid3, 8, 8, 4)
    expected = emb.time_embedding.weight[rows[0]] + emb.height_embedding.weight[rows[1]] + emb.width_embedding.weight[rows[2]]
    torch.testing.assert_close(pos, expected)
    assert rows[1].unique().tolist() == [0, 4] and rows[2].unique().tolist() == list(range(8))
    with pytest.raises(ValueError, match="5 time positions exceed the time table of 4"):
        factorized_position_ids([(5, 1, 1)], 8, 8, 4)


def test_a_2x_resolution_subdivides_the_positions_of_the_smaller_one():
    small = factorized_position_ids([(1, 4, 4)], 8, 8, 1)
    large = factorized_position_ids([(1, 8, 8)], 8, 8, 1)
    assert set(small[1].tolist()) < set(large[1].tolist())
    assert small[1].unique().tolist() == large[1].unique().tolist()[::2]


def test_tubelet_config_checks():
    with pytest.raises(ConfigError, match="vision.patch=tubelet needs vision.position_embedding=factorized"):
        build_config(2, overrides={"vision.patch": "tubelet"})
    with pytest.raises(ConfigError, match="vision.tubelet_frames=3 does not divide vision.max_frames=16"):
        build_config(2, overrides={"vision.patch": "tubelet", "vision.position_embedding": "factorized",
                                   "vision.tubelet_frames": 3})
    cfg = build_config(2, overrides={"vision.patch": "tubelet", "vision.position_embedding": "factorized"}).vision
    assert (cfg.tubelet_frames, cfg.max_frames, cfg.max_time_positions) == (4, 16, 4)
    names = {n for n, _ in VisionTransformer(cfg).named_parameters()}
    assert {"embeddings.time_embedding.weight", "embeddings.height_embedding.weight",
            "embeddings.width_embedding.weight"} <= names and "embeddings.position_embedding.weight" not in names


def test_crops_recompute_with_a_video_gives_the_same_features_and_gradients():
    from aria_train.model.multimodal import build_multimodal_model

    video, image = torch.rand(4, 3, 70, 70), torch.rand(3, 70, 70)
    tubelets, grid3 = patchify_video(video, 4, 14)
    patches, grid = patchify(image, 14)
    media = MediaBatch(patches, [grid], tubelets, [grid3], media_order=["image", "video"])
    results = []
    for mode in ("none", "crops"):
        cfg = build_config(2, overrides={"vision.patch": "tubelet", "vision.position_embedding": "factorized",
                                         "vision.activation_checkpointing": mode, "vision.checkpoint_crops": 1})
        model = build_multimodal_model(cfg.model, cfg.vision, cfg.projector, image_token_id=5, seed=0).train()
        features, encoded = model.media_features(media)
        (features * torch.linspace(-1, 1, features.numel()).view_as(features)).sum().backward()
        grads = [p.grad.clone() for p in model.vision_tower.parameters() if p.grad is not None]
        results.append((features.detach(), encoded.lengths, grads))
    (f0, l0, g0), (f1, l1, g1) = results
    assert l0 == l1 == [25, 25] and f0.shape == (8, 64)  # 4 queries each at the decoder width
    torch.testing.assert_close(f1, f0)
    assert len(g0) == len(g1) > 0
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a)


def test_crops_recompute_is_refused_with_encoder_experts():
    with pytest.raises(ConfigError, match="vision.activation_checkpointing=crops with vision.moe experts"):
        build_config(2, overrides={"vision.moe.num_experts": 4, "vision.activation_checkpointing": "crops"})
