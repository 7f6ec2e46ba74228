"""Functions the spawned ranks of tests/encoder run (importable by the children: spawn passes
sys.path on)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from aria_train.train.encoder.losses import global_infonce

N, D_IMAGE, D_TEXT, D = 8, 7, 5, 6


def infonce_problem(seed: int = 0):
    """A global batch of N pairs and replicated parameters: image/text projections and the log
    scale. float64 inputs so that only the loss's own float32 arithmetic differs."""
    g = torch.Generator().manual_seed(seed)
    return {
        "image_x": torch.randn(N, D_IMAGE, generator=g),
        "text_x": torch.randn(N, D_TEXT, generator=g),
        "w_image": torch.randn(D_IMAGE, D, generator=g),
        "w_text": torch.randn(D_TEXT, D, generator=g),
        "logit_scale": torch.tensor([2.3]),
        "weights": torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
    }


def _leaves(problem: dict, rows: slice) -> dict:
    out = {k: problem[k].clone().requires_grad_(True) for k in ("w_image", "w_text", "logit_scale")}
    out["image_x"] = problem["image_x"][rows].clone().requires_grad_(True)
    out["text_x"] = problem["text_x"][rows].clone().requires_grad_(True)
    return out


def infonce_rank(rank: int, world: int, out_path: str, use_weights: bool) -> None:
    """Rank r takes rows [r*b, (r+1)*b); the loss shares and parameter gradients are summed over
    ranks (what ZeRO-1 / replicated AdamW do); input-row gradients are gathered."""
    problem = infonce_problem()
    b = N // world
    leaves = _leaves(problem, slice(rank * b, (rank + 1) * b))
    weights = problem["weights"][rank * b:(rank + 1) * b] if use_weights else None
    out = global_infonce(leaves["image_x"] @ leaves["w_image"], leaves["text_x"] @ leaves["w_text"],
                         leaves["logit_scale"], weights_B=weights)
    out.loss_share.backward()
    loss = out.loss_share.detach().clone()
    dist.all_reduce(loss)
    result = {"loss": loss}
    for name in ("w_image", "w_text", "logit_scale"):
        grad = leaves[name].grad.clone()
        dist.all_reduce(grad)
        result[name] = grad
    for name in ("image_x", "text_x"):
        pieces = [torch.empty_like(leaves[name].grad) for _ in range(world)]
        dist.all_gather(pieces, leaves[name].grad.contiguous())
        result[name] = torch.cat(pieces)
    if rank == 0:
        torch.save(result, out_path)


def infonce_single(use_weights: bool) -> dict:
    """The same loss on one process over the concatenated batch."""
    problem = infonce_problem()
    leaves = _leaves(problem, slice(0, N))
    out = global_infonce(leaves["image_x"] @ leaves["w_image"], leaves["text_x"] @ leaves["w_text"],
                         leaves["logit_scale"], weights_B=problem["weights"] if use_weights else None,
                         distributed=False)
    out.loss_share.backward()
    result = {"loss": out.loss_share.detach()}
    result.update({name: leaves[name].grad for name in ("w_image", "w_text", "logit_scale", "image_x", "text_x")})
    return result
