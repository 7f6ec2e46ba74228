"""Functions run on every rank by the multi-rank tests of this directory (spawned children cannot
import test modules; this directory is put on sys.path, which spawn passes on)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from aria_train.model.vision import VisionTransformer
from aria_train.model.vision_config import VisionConfig
from aria_train.nn.media import MediaBatch
from aria_train.parallel.expert_parallel import apply_expert_parallel
from aria_train.parallel.groups import init_parallel_groups

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spawn_world import run_world  # noqa: E402,F401  (re-exported for the tests)

GRIDS = [(2, 3), (4, 4), (1, 2), (3, 1)]


def encoder_config(router: str) -> VisionConfig:
    cfg = VisionConfig(hidden_size=16, num_layers=4, num_heads=2, intermediate_size=24, patch_size=2, image_size=8,
                       patch="tubelet", tubelet_frames=2, max_frames=4, position_embedding="factorized")
    cfg.moe.num_experts, cfg.moe.router, cfg.moe.top_k = 8, router, 2  # expert choice: c = top_k = 2
    return cfg.validate()


def rank_media(rank: int, empty_rank: int) -> tuple[MediaBatch, torch.Tensor]:
    """Rank r's own images and one video (none on `empty_rank`), and the output gradient."""
    if rank == empty_rank:
        return MediaBatch(), torch.zeros(0, 16, dtype=torch.float64)
    g = torch.Generator().manual_seed(100 + rank)
    grid = GRIDS[: 2 + rank % 3]
    patches = torch.randn(sum(h * w for h, w in grid), 12, generator=g, dtype=torch.float64)
    video = torch.randn(2 * 2 * 3, 24, generator=g, dtype=torch.float64)  # (t, h, w) = (2, 2, 3) tubelets
    media = MediaBatch(patches, grid, video, [(2, 2, 3)], media_order=["image", "video"] + ["image"] * (len(grid) - 1))
    return media, torch.randn(patches.shape[0] + video.shape[0], 16, generator=g, dtype=torch.float64)


def _loss(tower, media, grad_out):
    out = tower.encode(media)
    return (out.features * grad_out).sum() + out.z_loss + out.balance_loss, out


def encoder_ep_worker(rank: int, world: int, cases: list) -> None:
    for ep, router, empty_rank in cases:
        _encoder_case(rank, world, ep, router, empty_rank)


def _encoder_case(rank: int, world: int, ep: int, router: str, empty_rank: int) -> None:
    """The encoder at EP size `ep`, each rank encoding its own media, equals one process running
    every rank's media through the full tower (each rank's batch on its own: expert choice takes
    the top-C over the tokens a rank holds): features, and gradients summed over ranks (experts
    over their EDP group)."""
    ref = VisionTransformer(encoder_config(router)).double()
    ref.init_weights(3)
    model = copy.deepcopy(ref)
    ref_features = None
    for r in range(world):
        media, grad_out = rank_media(r, empty_rank)
        loss, out = _loss(ref, media, grad_out)
        loss.backward()
        if r == rank:
            ref_features = out.features.detach()

    groups = init_parallel_groups(ep)
    apply_expert_parallel(model, groups)
    media, grad_out = rank_media(rank, empty_rank)
    loss, out = _loss(model, media, grad_out)
    loss.backward()
    tol = dict(rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(out.features, ref_features, **tol)
    experts = 0
    for name, param in model.named_parameters():
        grad = param.grad.clone() if param.grad is not None else torch.zeros_like(param)
        ref_param = ref.get_parameter(name)
        ref_grad = ref_param.grad if ref_param.grad is not None else torch.zeros_like(ref_param)  # post_layernorm: unused
        if ".experts." in name:
            experts += 1
            layout = model.get_submodule(name.rsplit(".", 1)[0]).layout
            assert (layout.ep_size, layout.num_local_experts) == (ep, 8 // ep)
            dist.all_reduce(grad, group=groups.edp_group)
            ref_grad = ref_grad[layout.first : layout.end]
        else:
            dist.all_reduce(grad)
        torch.testing.assert_close(grad, ref_grad, **tol, msg=lambda m: f"ep {ep} {router} {name}: {m}")
    assert experts == 4  # w_gate_up and w_down of the two MoE layers (the last half of 4)


def multimodal_empty_rank_worker(rank: int, world: int) -> None:
    """The whole multimodal model with encoder experts at EP = world: rank 0 has an image, the
    others text only (their towers still run for the all-to-alls). Losses and gradients equal a
    single process running each rank's micro-batch on its own; nothing hangs."""
    from aria_train.model.multimodal import build_multimodal_model
    from aria_train.nn.image_patches import pack_images
    from aria_train.train.run_config import build_config

    cfg = build_config(2, overrides={"vision.moe.num_experts": 4, "model.qk_norm": "rmsnorm"})
    ref = build_multimodal_model(cfg.model, cfg.vision, cfg.projector, image_token_id=5, seed=1).double()
    model = copy.deepcopy(ref)

    def batch(r):
        tokens = torch.full((1, 10), 7 + r)
        if r != 0:
            return tokens, {"patches": None, "grid": []}
        tokens[0, 2:6] = 5
        patches, grid = pack_images([torch.randn(3, 70, 70, generator=torch.Generator().manual_seed(r))], 14)
        return tokens, {"patches": patches.double(), "grid": grid}

    def loss_of(m, r):
        tokens, media = batch(r)
        out = m(tokens, **media)
        return out.hidden.square().mean() + out.balance_loss + out.z_loss

    ref_loss = None
    for r in range(world):
        loss = loss_of(ref, r)
        loss.backward()
        ref_loss = loss.detach() if r == rank else ref_loss
    groups = init_parallel_groups(world)
    apply_expert_parallel(model, groups)
    loss = loss_of(model, rank)
    loss.backward()
    torch.testing.assert_close(loss.detach(), ref_loss, rtol=1e-10, atol=1e-12)
    for name, param in model.named_parameters():
        grad = param.grad.clone() if param.grad is not None else torch.zeros_like(param)
        ref_param = ref.get_parameter(name)
        ref_grad = ref_param.grad if ref_param.grad is not None else torch.zeros_like(ref_param)
        dist.all_reduce(grad)
        if ".experts." in name:  # EP = world: one EDP group per expert slice, of one rank
            layout = model.get_submodule(name.rsplit(".", 1)[0]).layout
            ref_grad, grad = ref_grad[layout.first : layout.end], param.grad
        torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-11, msg=lambda m: f"{name}: {m}")
