"""Ultra-high resolution as transformers' AriaImageProcessor(split_image=True) computes it
(`data.image_split: transformers`), the way users of the released weights process images:

  1. best fit: of the candidate resolutions (rows x cols grids of `unit` px; ARIA's 19 grids
     of 490 px, image_tokens.SPLIT_RATIOS), the one that keeps the most of the image's pixels
     when the image is scaled (aspect ratio kept, floored) to fit inside it; ties go to the one
     wasting the fewest pixels, then to the earlier entry;
  2. resize to fit it with the aspect ratio kept (the side that limits is the candidate's, the
     other rounded up, at most the candidate's): PIL bicubic on the uint8 image;
  3. pad to the candidate, centred (left/top get half the padding, right/bottom the rest), black;
  4. cut into tiles of `tile` px, row by row (the last row / column is short when `tile` does
     not divide the candidate);
  5. each tile becomes a crop as in medium/high (image_tokens: long side -> tile px, short side
     at least min_size, black padding to whole patches): no global view.
The original ARIA code (`data.image_split: aria`, image_tokens.process_image) instead adds a
global view and stretches the image to the grid closest in aspect ratio, so the two give
different crops for most images (700x450: 2 crops here, 7 there; 1200x500: 6 here, 3 there).

Written from the processor's definition with PIL and torch; tests/vision/test_image_split.py
checks it against AriaImageProcessor crop for crop and pixel for pixel.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from aria_train.data.image_tokens import (
    PATCH_SIZE,
    SIZE_TO_QUERIES,
    SPLIT_RATIOS,
    ImageCrops,
    _keep_ratio_crop,
    _size,
)

try:
    from PIL import Image as _PILImage
except ImportError:  # pragma: no cover
    _PILImage = None


def best_fit_resolution(width: int, height: int, resolutions: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """(height, width) of the candidate that keeps the most pixels, then wastes the fewest."""
    best, best_kept, best_waste = None, -1, math.inf
    for res_h, res_w in resolutions:
        scale = min(res_w / width, res_h / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        waste = res_w * res_h - kept
        if kept > best_kept or (kept == best_kept and waste < best_waste):
            best, best_kept, best_waste = (res_h, res_w), kept, waste
    return best


def fit_inside(width: int, height: int, res_h: int, res_w: int) -> tuple[int, int]:
    """(new_h, new_w): scaled to fit (res_h, res_w), aspect ratio kept, the free side rounded up."""
    scale_w, scale_h = res_w / width, res_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), res_h), res_w
    return res_h, min(math.ceil(width * scale_h), res_w)


def candidate_resolutions(unit: int, ratios: Sequence[tuple[int, int]] = SPLIT_RATIOS) -> list[tuple[int, int]]:
    return [(rows * unit, cols * unit) for rows, cols in ratios]


def split_grid(width: int, height: int, tile: int, unit: int, ratios=SPLIT_RATIOS) -> tuple[int, int]:
    """(rows, cols) of tiles an image of width x height is cut into (from its size alone)."""
    res_h, res_w = best_fit_resolution(width, height, candidate_resolutions(unit, ratios))
    return math.ceil(res_h / tile), math.ceil(res_w / tile)


def _rgb(image) -> "_PILImage.Image":
    """A PIL RGB image from a PIL image or a [3, H, W] uint8 / 0..1 float tensor."""
    if _PILImage is not None and isinstance(image, _PILImage.Image):
        return image.convert("RGB")
    if _PILImage is None:  # pragma: no cover
        raise ValueError("data.image_split=transformers needs pillow")
    x = image if image.dtype == torch.uint8 else (image.float() * 255.0).round().clamp(0, 255).to(torch.uint8)
    return _PILImage.fromarray(x.permute(1, 2, 0).contiguous().numpy())


def split_transformers(
    image,
    tile: int = 490,
    unit: int = 490,
    min_size: int = 336,
    patch_size: int = PATCH_SIZE,
    size_to_queries: dict = SIZE_TO_QUERIES,
    ratios: Sequence[tuple[int, int]] = SPLIT_RATIOS,
) -> ImageCrops:
    """One image -> its crops the way AriaImageProcessor(split_image=True, max_image_size=tile)
    cuts it (candidates: `ratios` x `unit` px). Crops are normalised [3, H, W] with whole patches."""
    if tile not in size_to_queries:
        raise ValueError(f"crop size {tile} has no query count in {size_to_queries}")
    rgb = _rgb(image)
    width, height = _size(rgb)
    res_h, res_w = best_fit_resolution(width, height, candidate_resolutions(unit, ratios))
    new_h, new_w = fit_inside(width, height, res_h, res_w)
    resized = np.asarray(rgb.resize((new_w, new_h), resample=_PILImage.Resampling.BICUBIC))
    canvas = np.zeros((res_h, res_w, 3), dtype=np.uint8)
    top, left = (res_h - new_h) // 2, (res_w - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = resized
    crops = []
    for y in range(0, res_h, tile):
        for x in range(0, res_w, tile):
            piece = _PILImage.fromarray(np.ascontiguousarray(canvas[y : y + tile, x : x + tile]))
            crops.append(_keep_ratio_crop(piece, tile, min(min_size, tile), patch_size))
    grid = [(c.shape[1] // patch_size, c.shape[2] // patch_size) for c in crops]
    split = (math.ceil(res_h / tile), math.ceil(res_w / tile))
    return ImageCrops(crops=crops, grid=grid, queries=size_to_queries[tile], split=split)
