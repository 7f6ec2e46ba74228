"""ARIA's image inputs: crops and the image-token format.

An image becomes `crops` crops, each of which the projector turns into `queries` embeddings
(128 for a 490 px crop, 256 for 980 px). In the text the image is

    <fim_prefix> + <|img|> x (crops * queries) + <fim_suffix>

and the decoder's embeddings at the `<|img|>` positions are replaced by the crops' features, crop
by crop (aria_train.model.multimodal).

Resolution modes:
  medium      one crop, long side resized to 490 px  -> 128 image tokens
  high        one crop, long side resized to 980 px  -> 256 image tokens
  ultra-high  the image resized to a grid of rows x cols tiles of `tile_size` (490 or 980) px,
              the grid being the entry of SPLIT_RATIOS whose aspect ratio is closest to the
              image's; the crops are a global view of the whole image (as "medium"/"high") first,
              then the tiles row by row -> (1 + rows*cols) * queries tokens.
A crop's short side is resized to int(short * scale), at least `min_size` (336 px) and padded
with black to a multiple of the patch size (14): its h x w patches are what the ViT sees, and
what transformers' AriaImageProcessor marks valid in its pixel_mask after padding the crop to a
490/980 square. Pixels are normalised as ARIA does: (x / 255 - 0.5) / 0.5, so padding is -1.

Token ids are arguments (they come from aria_train.data.tokenizer: `<|img|>`, `<fim_prefix>`,
`<fim_suffix>`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch
import torch.nn.functional as F

RESOLUTIONS = {"medium": 490, "high": 980}
MODES = ("medium", "high", "ultra-high")
SIZE_TO_QUERIES = {490: 128, 980: 256}  # crop side (px) -> projector queries (AriaProcessor.size_conversion)
# (rows, cols) tile grids: AriaImageProcessor's default split_resolutions (x 490 px), as (height, width).
SPLIT_RATIOS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (1, 7), (1, 8), (2, 4), (2, 3), (2, 2),
    (2, 1), (3, 1), (3, 2), (4, 1), (4, 2), (5, 1), (6, 1), (7, 1), (8, 1),
)  # fmt: skip
MIN_SIZE = 336
PATCH_SIZE = 14
IMAGE_MEAN = 0.5
IMAGE_STD = 0.5

try:  # pillow is optional: tensors work without it
    from PIL import Image as _PILImage
except ImportError:  # pragma: no cover
    _PILImage = None

ImageLike = Union["_PILImage.Image", torch.Tensor]  # PIL image, or [3, H, W] uint8 (0..255) / float (0..1)


def image_token_ids(num_crops: int, queries: int, image_token_id: int, prefix_id: int, suffix_id: int) -> list[int]:
    """The token ids standing for one image: prefix, crops*queries image tokens, suffix."""
    return [prefix_id] + [image_token_id] * (num_crops * queries) + [suffix_id]


def select_split(width: int, height: int, tile_size: int, ratios: Sequence[tuple[int, int]] = SPLIT_RATIOS) -> tuple[int, int]:
    """(rows, cols) of the grid whose aspect ratio cols/rows is closest to width/height.

    Ties (1x2 vs 2x4, 2x1 vs 4x2) go to the later entry when the image has more than half the
    grid's pixels (ARIA's rule; its reference code squares the height where the area is meant,
    here the area is width*height)."""
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for rows, cols in ratios:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (rows, cols), diff
        elif diff == best_diff and width * height > 0.5 * tile_size * tile_size * rows * cols:
            best = (rows, cols)
    return best


def _mode_size(mode: str, tile_size: int) -> int:
    if mode not in MODES:
        raise ValueError(f"resolution mode {mode!r} is not one of {MODES}")
    return RESOLUTIONS[mode] if mode in RESOLUTIONS else tile_size


def crop_grid(
    width: int,
    height: int,
    mode: str,
    tile_size: int = 490,
    ratios: Sequence[tuple[int, int]] = SPLIT_RATIOS,
) -> tuple[int, int]:
    """(rows, cols) of tiles for an image; (1, 1) = a single crop (medium, high)."""
    if mode != "ultra-high":
        _mode_size(mode, tile_size)
        return (1, 1)
    return select_split(width, height, tile_size, ratios)


def count_image_tokens(
    width: int,
    height: int,
    mode: str,
    tile_size: int = 490,
    size_to_queries: dict = SIZE_TO_QUERIES,
    ratios: Sequence[tuple[int, int]] = SPLIT_RATIOS,
    with_markers: bool = True,
) -> int:
    """Tokens an image takes in the text (with `<fim_prefix>`/`<fim_suffix>` unless
    with_markers=False), without touching pixels."""
    size = _mode_size(mode, tile_size)
    rows, cols = crop_grid(width, height, mode, tile_size, ratios)
    crops = 1 if rows * cols == 1 else 1 + rows * cols
    return crops * size_to_queries[size] + (2 if with_markers else 0)


@dataclass
class ImageCrops:
    crops: list  # [3, H_i, W_i] float, normalised, sides multiples of the patch size
    grid: list  # per crop (h_patches, w_patches)
    queries: int  # projector queries per crop
    split: tuple  # (rows, cols) of tiles; (1, 1) = no split

    @property
    def num_crops(self) -> int:
        return len(self.crops)

    @property
    def num_image_tokens(self) -> int:
        """`<|img|>` tokens (crops x queries), without the prefix/suffix markers."""
        return self.num_crops * self.queries

    def token_ids(self, image_token_id: int, prefix_id: int, suffix_id: int) -> list[int]:
        return image_token_ids(self.num_crops, self.queries, image_token_id, prefix_id, suffix_id)


def _to_tensor(image: ImageLike) -> torch.Tensor:
    """-> float [3, H, W] in 0..255"""
    if _PILImage is not None and isinstance(image, _PILImage.Image):
        import numpy as np

        arr = np.asarray(image.convert("RGB"), dtype=np.float32)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError("an image must be a PIL image or a [3, H, W] tensor")
    if image.dtype == torch.uint8:
        return image.float()
    return image.float() * 255.0


def _resize(image: ImageLike, width: int, height: int) -> torch.Tensor:
    """Bicubic resize -> float [3, height, width] in 0..255 (PIL's for PIL images, as ARIA)."""
    if _PILImage is not None and isinstance(image, _PILImage.Image):
        return _to_tensor(image.convert("RGB").resize((width, height), resample=_PILImage.Resampling.BICUBIC))
    x = _to_tensor(image)
    if tuple(x.shape[1:]) == (height, width):
        return x
    x = F.interpolate(x.unsqueeze(0), size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return x.squeeze(0).clamp(0.0, 255.0)


def _size(image: ImageLike) -> tuple[int, int]:
    if _PILImage is not None and isinstance(image, _PILImage.Image):
        return image.size
    return int(image.shape[2]), int(image.shape[1])


def keep_ratio_crop(image: ImageLike, max_size: int, min_size: int, patch_size: int) -> torch.Tensor:
    """Long side -> max_size, short side -> max(int(short * scale), min_size); pad right/bottom to
    a multiple of the patch size; normalise. -> [3, H, W]"""
    width, height = _size(image)
    scale = max_size / max(width, height)
    min_size = min(min_size, max_size)
    if width >= height:
        new_w, new_h = max_size, max(int(height * scale), min_size)
    else:
        new_w, new_h = max(int(width * scale), min_size), max_size
    x = _resize(image, new_w, new_h)
    pad_w, pad_h = -new_w % patch_size, -new_h % patch_size
    x = F.pad(x, (0, pad_w, 0, pad_h), value=0.0)
    return (x / 255.0 - IMAGE_MEAN) / IMAGE_STD


def process_image(
    image: ImageLike,
    mode: str = "medium",
    tile_size: int = 490,
    min_size: int = MIN_SIZE,
    patch_size: int = PATCH_SIZE,
    size_to_queries: dict = SIZE_TO_QUERIES,
    ratios: Sequence[tuple[int, int]] = SPLIT_RATIOS,
) -> ImageCrops:
    """One image -> its crops (normalised tensors with patch grids) and token counts.

    mode: "medium" (490 px), "high" (980 px) or "ultra-high" (global view + tiles of tile_size px).
    size_to_queries maps a crop size to its projector queries ({490: 128, 980: 256}); tests
    use small sizes (e.g. {70: 4})."""
    size = _mode_size(mode, tile_size)
    if size % patch_size:
        raise ValueError(f"crop size {size} is not a multiple of the patch size {patch_size}")
    if size not in size_to_queries:
        raise ValueError(f"crop size {size} has no query count in {size_to_queries}")
    width, height = _size(image)
    rows, cols = crop_grid(width, height, mode, tile_size, ratios)
    crops = [keep_ratio_crop(image, size, min_size, patch_size)]
    if rows * cols > 1:
        tiled = (_resize(image, cols * size, rows * size) / 255.0 - IMAGE_MEAN) / IMAGE_STD
        for r in range(rows):
            for c in range(cols):
                crops.append(tiled[:, r * size : (r + 1) * size, c * size : (c + 1) * size])
    grid = [(crop.shape[1] // patch_size, crop.shape[2] // patch_size) for crop in crops]
    return ImageCrops(crops=crops, grid=grid, queries=size_to_queries[size], split=(rows, cols))


__all__ = [
    "ImageCrops",
    "MODES",
    "SIZE_TO_QUERIES",
    "SPLIT_RATIOS",
    "count_image_tokens",
    "crop_grid",
    "image_token_ids",
    "keep_ratio_crop",
    "process_image",
    "select_split",
]
