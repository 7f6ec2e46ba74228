"""How images travel from the data pipeline to the ViT: cut into patches, packed into one tensor
per micro-batch with a grid of (h_patches, w_patches) per image. The data side
(aria_train.data.multimodal) packs, the model side (aria_train.model.vision) unpacks."""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch.utils.checkpoint import checkpoint

Grid = Union[Sequence[tuple[int, int]], torch.Tensor]  # per image (h_patches, w_patches); or LongTensor [N, 2]


def patchify(image: torch.Tensor, patch_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """image [C, H, W] (H, W multiples of patch_size) -> (patches [h*w, C*p*p], (h, w)).

    Patches are in row-major order; each is flattened in (c, y, x) order, the order of a
    Conv2d weight [D, C, p, p] flattened to [D, C*p*p].
    """
    c, height, width = image.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"image {height}x{width} is not a multiple of the patch size {patch_size}")
    h, w = height // patch_size, width // patch_size
    patches = image.reshape(c, h, patch_size, w, patch_size).permute(1, 3, 0, 2, 4).reshape(h * w, -1)
    return patches, (h, w)


def pack_images(images: Sequence[torch.Tensor], patch_size: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """list of [C, H_i, W_i] -> (patches [sum h_i*w_i, C*p*p], grid [(h_i, w_i)])."""
    out = [patchify(img, patch_size) for img in images]
    return torch.cat([p for p, _ in out]), [g for _, g in out]


def grid_list(grid: Grid) -> list[tuple[int, int]]:
    if isinstance(grid, torch.Tensor):
        grid = grid.tolist()
    return [(int(h), int(w)) for h, w in grid]


def patchify_video(video: torch.Tensor, frames_per_tubelet: int, patch_size: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """video [F, C, H, W] (F a multiple of frames_per_tubelet, H and W of patch_size) ->
    (tubelets [t*h*w, C*f*p*p], (t, h, w)).

    Tubelets are in (t, y, x) row-major order; each is flattened in (c, dt, dy, dx) order, the
    order of a Conv3d weight [D, C, f, p, p] flattened to [D, C*f*p*p]."""
    num_frames, c, height, width = video.shape
    f, p = frames_per_tubelet, patch_size
    if num_frames % f or height % p or width % p:
        raise ValueError(f"video of {num_frames} frames of {height}x{width} does not tile into {f}x{p}x{p} tubelets")
    t, h, w = num_frames // f, height // p, width // p
    tubelets = video.reshape(t, f, c, h, p, w, p).permute(0, 3, 5, 2, 1, 4, 6).reshape(t * h * w, -1)
    return tubelets, (t, h, w)


def run_by_crop_groups(fn, patches: torch.Tensor, grid: list[tuple[int, int]], group: int) -> torch.Tensor:
    """fn(patches of some crops, their grid) -> [rows, ...], run on groups of `group` crops, each
    group a checkpoint region that keeps only its pixels and output and is recomputed in backward
    on its own; the outputs concatenated in order. Right only when crops are independent in `fn`
    (attention stays inside a crop), so the result equals fn(patches, grid)."""
    out, start = [], 0
    for first in range(0, len(grid), group):
        crops = grid[first : first + group]
        end = start + sum(h * w for h, w in crops)
        out.append(checkpoint(fn, patches[start:end], crops, use_reentrant=False))
        start = end
    return torch.cat(out)
