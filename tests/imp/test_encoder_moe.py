"""MoE in the ViT (vision.moe): placement, the tower and the multimodal model with it, expert
initialisation per global expert, checkpoint keys and optimizer placement of the encoder's
experts, and `--dry-run` counts against a hand count."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aria_train.checkpoint.state import model_state
from aria_train.config import ConfigError
from aria_train.model.multimodal import build_multimodal_model
from aria_train.model.vision import VisionTransformer
from aria_train.model.vision_config import VisionConfig
from aria_train.moe.layer import MoELayer
from aria_train.moe.layout import ExpertLayout
from aria_train.nn.media import MediaBatch
from aria_train.optim.config import OptimizerConfig
from aria_train.optim.flat_state import collect_params
from aria_train.parallel.expert_parallel import _slice_experts
from aria_train.train.run_config import build_config

ROOT = Path(__file__).resolve().parents[2]


def _stage2(**overrides):
    return build_config(2, overrides={"vision.moe.num_experts": 4, **overrides})


@pytest.mark.parametrize("layers,num_layers,expected", [
    ("last_half", 4, [2, 3]), ("last_half", 27, list(range(14, 27))), ("last_half", 2, [1]),
    ("every_other", 5, [1, 3]), ("all", 3, [0, 1, 2]), ("0 2", 3, [0, 2]), ([3, 1], 4, [1, 3]),
])
def test_encoder_moe_layers(layers, num_layers, expected):
    cfg = _stage2(**{"vision.moe.layers": layers, "vision.num_layers": num_layers})
    assert cfg.vision.moe_layers == expected
    assert build_config(2, overrides={"vision.num_layers": num_layers}).vision.moe_layers == []  # off by default


@pytest.mark.parametrize("overrides,message", [
    ({"vision.moe.layers": "1 5"}, "vision.moe.layers=[1, 5] must be distinct layer numbers in [0, 2)"),
    ({"vision.moe.layers": "middle"}, "config key vision.moe.layers='middle' is none of: last_half | every_other | all"),
    ({"vision.moe.layer_freq": 2}, "vision.moe.layer_freq is the decoder's placement; the encoder's is vision.moe.layers"),
    ({"vision.moe.top_k": 5}, "vision.moe.top_k=5 exceeds vision.moe.num_experts=4"),
    ({"parallel.ep_size": 8, "model.moe.num_experts": 16}, "parallel.ep_size=8 does not divide vision.moe.num_experts=4"),
])
def test_bad_encoder_moe_is_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        _stage2(**overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def _tower(seed=0, **moe):
    cfg = VisionConfig(hidden_size=16, num_layers=4, num_heads=2, intermediate_size=24, patch_size=2, image_size=8)
    for key, value in moe.items():
        setattr(cfg.moe, key, value)
    tower = VisionTransformer(cfg)
    tower.init_weights(seed)
    return tower


def _images(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    grid = [(2, 3), (4, 4), (1, 2)][:n]
    return torch.randn(sum(h * w for h, w in grid), 12, generator=g), grid


def test_tower_with_expert_choice_moe_in_the_last_half():
    tower = _tower(num_experts=4)
    assert [isinstance(layer.mlp, MoELayer) for layer in tower.encoder.layers] == [False, False, True, True]
    assert tower.encoder.layers[2].mlp.experts.w_gate_up.shape == (4, 16, 48)  # expert width = intermediate
    assert tower.encoder.layers[2].mlp.shared is None
    patches, grid = _images()
    out = tower.encode(MediaBatch(patches, grid))
    assert out.features.shape == (patches.shape[0], 16) and out.lengths == [6, 16, 2]
    assert len(out.router_stats) == 2
    C = -(-1 * 24 // 4)  # ceil(c * T / E), c = top_k = 1, T = 24 tokens
    assert all(s.tokens_per_expert.tolist() == [C] * 4 for s in out.router_stats)
    assert float(out.balance_loss.detach()) == 0.0 and float(out.z_loss.detach()) > 0
    torch.testing.assert_close(tower(patches, grid), out.features)
    dense = _tower()
    assert not torch.allclose(dense(patches, grid), out.features)


def test_expert_weights_are_seeded_per_global_expert():
    """A rank holding experts [2, 4) initialises exactly the full tower's slice (ep 2, rank 1)."""
    full = _tower(seed=5, num_experts=4)
    shard = VisionTransformer(full.cfg)
    for layer in shard.encoder.layers[2:]:
        _slice_experts(layer.mlp.experts, ExpertLayout(4, 2, 1))
    shard.init_weights(5)
    for name, param in shard.named_parameters():
        ref = full.get_parameter(name)
        if "experts." in name:
            ref = ref[2:4]
        torch.testing.assert_close(param, ref, rtol=0, atol=0, msg=name)
    assert float(full.encoder.layers[2].mlp.experts.w_down[0].detach().std()) == pytest.approx(24**-0.5, rel=0.2)  # fan-in I


def test_no_images_still_runs_the_layers_and_keeps_them_in_the_graph():
    tower = _tower(num_experts=4)
    calls = []
    tower.encoder.layers[3].mlp.register_forward_hook(lambda *a: calls.append(1))
    out = tower.encode(MediaBatch())
    assert out.features.shape == (0, 16) and out.lengths == [] and calls == [1]
    assert float(out.balance_loss) == 0.0 and float(out.z_loss) == 0.0
    out.features.sum().backward()
    assert tower.encoder.layers[3].mlp.experts.w_down.grad is not None  # the backward reached the experts


def _mm_model(**overrides):
    cfg = _stage2(**overrides)
    return build_multimodal_model(cfg.model, cfg.vision, cfg.projector, image_token_id=5, seed=0), cfg


def test_multimodal_model_adds_the_encoder_losses_and_runs_the_tower_without_images():
    model, cfg = _mm_model(**{"vision.moe.router": "topk", "vision.moe.top_k": 2})
    crop = torch.randn(3, 70, 70)
    from aria_train.nn.image_patches import pack_images

    patches, grid = pack_images([crop], 14)
    tokens = torch.full((1, 12), 7)
    tokens[0, 2:6] = 5  # a 5x5-patch crop -> 4 queries
    out = model(tokens, patches=patches, grid=grid)
    encoded = model.vision_tower.encode(MediaBatch(patches, grid))
    text_only = model.language_model(position_ids=None, inputs_embeds=model.embed(tokens, patches, grid))
    torch.testing.assert_close(out.balance_loss, text_only.balance_loss + encoded.balance_loss)
    torch.testing.assert_close(out.z_loss, text_only.z_loss + encoded.z_loss)
    assert float(encoded.balance_loss.detach()) > 0 and len(out.encoder_router_stats) == 1
    calls = []
    model.vision_tower.encoder.layers[1].mlp.register_forward_hook(lambda *a: calls.append(1))
    text = torch.full((1, 12), 7)
    out = model(text, patches=None, grid=[])
    assert calls == [1]  # the tower ran with no images
    torch.testing.assert_close(out.hidden, model.language_model(text).hidden)


def test_checkpoint_keys_and_optimizer_placement_name_global_encoder_experts():
    model, _ = _mm_model()
    experts = model.vision_tower.encoder.layers[1].mlp.experts
    _slice_experts(experts, ExpertLayout(4, 2, 1))  # this rank holds global experts 2 and 3
    keys = [k for k in model_state(model) if "vision_tower" in k and ".experts." in k]
    base = "model.vision_tower.encoder.layers.1.mlp.experts"
    assert sorted(keys) == sorted(f"{base}.{w}.expert_{g}" for w in ("w_gate_up", "w_down") for g in (2, 3))
    infos = {i.name: i for i in collect_params(model, OptimizerConfig())}
    info = infos["vision_tower.encoder.layers.1.mlp.experts.w_down"]
    assert info.is_expert and info.global_shape == (4, 64, 32) and info.global_offset == 2 * 64 * 32
    assert not infos["vision_tower.encoder.layers.1.mlp.router.weight"].is_expert


def test_dry_run_counts_the_last_half_against_a_hand_count():
    result = subprocess.run([sys.executable, str(ROOT / "launch" / "pretrain.py"), "--stage", "2", "--dry-run",
                             "--set", "vision.moe.num_experts=4", "--set", "vision.num_layers=4", "--ep-size", "2"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    # tiny ViT: width 32, MLP 64, patch 14 (3 channels), 10x10 positions, 4 layers; MoE in 2 and 3
    embeddings = 3 * 14 * 14 * 32 + 32 + 100 * 32
    attention_and_norms = 4 * (32 * 32 + 32) + 4 * 32
    dense_mlp = 32 * 64 + 64 + 64 * 32 + 32
    router, experts = 4 * 32, 4 * (32 * 2 * 64 + 64 * 32)  # SwiGLU experts as wide as the MLP
    total = embeddings + 2 * 32 + 4 * attention_and_norms + 2 * dense_mlp + 2 * (router + experts)
    assert (total, 2 * experts) == (97_312, 49_152)
    rows = {line[:29].strip(): line[29:].split("(")[0].strip() for line in result.stdout.splitlines()
            if line.startswith("  ")}
    assert rows["vision tower (ViT)"] == f"{total:,}"
    assert rows["routed experts"] == f"{2 * experts:,}"
    assert rows["dense"] == f"{total - 2 * experts:,}"
    assert rows["per rank (ep-size 2)"] == f"{total - experts:,}"
    assert rows["per patch in the ViT"] == f"{total - 2 * experts + 2 * experts // 4:,}"
    assert "(4 experts, expert choice, c=1, in encoder layers 2, 3 (of 4): vision.moe.layers=last_half)" in result.stdout


def test_plan_counts_shard_encoder_experts_like_the_decoders():
    from aria_train.plan.counts import count_stage

    counts = count_stage(_stage2(**{"vision.num_layers": 4}))
    assert counts.encoder_routed == 49_152 and counts.encoder.moe_layers == [2, 3]
    assert counts.all.routed_experts == counts.decoder.routed_experts + 49_152  # EP divides both
    assert any(n.startswith("vision_tower.") for n in counts.experts)
    assert counts.active_visual == (counts.decoder.active_per_token - counts.input_embedding
                                    + counts.vision - 49_152 + 49_152 // 4 + counts.projector)


def test_hf_export_refuses_imp_options(tmp_path):
    from aria_train.convert.hf_multimodal import save_hf_checkpoint

    model, _ = _mm_model(**{"vision.qk_norm": "layernorm"})
    with pytest.raises(ValueError, match="transformers' Aria has no vision.qk_norm, vision.moe: only models"):
        save_hf_checkpoint(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
