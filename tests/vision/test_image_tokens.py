"""ARIA's image-token format and crops: token counts per resolution mode, split-grid selection,
and pixel-exact agreement with transformers' AriaImageProcessorPil for medium/high crops."""

import numpy as np
import pytest
import torch

from aria_train.data.image_tokens import (
    SPLIT_RATIOS,
    count_image_tokens,
    image_token_ids,
    process_image,
    select_split,
)

PIL = pytest.importorskip("PIL.Image")
IMG, PREFIX, SUFFIX = 5, 6, 7


def _pil(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return PIL.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_token_block_format():
    ids = image_token_ids(3, 128, IMG, PREFIX, SUFFIX)
    assert ids[0] == PREFIX and ids[-1] == SUFFIX and ids[1:-1] == [IMG] * 384


@pytest.mark.parametrize(
    "size, mode, tile, crops, grids, tokens",
    [
        ((520, 300), "medium", 490, 1, [(24, 35)], 128),  # short side 282 -> min 336 px = 24 patches
        ((300, 700), "medium", 490, 1, [(35, 24)], 128),
        ((520, 300), "high", 490, 1, [(41, 70)], 256),  # 565 px -> padded to 574 = 41 patches
        ((1000, 500), "ultra-high", 490, 3, [(24, 35)] + [(35, 35)] * 2, 3 * 128),  # 1x2 tiles + global
        ((2000, 1000), "ultra-high", 490, 9, [(24, 35)] + [(35, 35)] * 8, 9 * 128),  # 2x4
        ((800, 800), "ultra-high", 490, 5, [(35, 35)] * 5, 5 * 128),  # 2x2 (ARIA's grid has no 1x1)
        ((800, 800), "ultra-high", 980, 5, [(70, 70)] * 5, 5 * 256),
    ],
)
def test_token_counts(size, mode, tile, crops, grids, tokens):
    out = process_image(_pil(*size), mode, tile_size=tile)
    assert out.num_crops == crops
    assert out.grid == grids
    assert out.num_image_tokens == tokens
    assert all(c.shape[1:] == (h * 14, w * 14) for c, (h, w) in zip(out.crops, out.grid))
    assert len(out.token_ids(IMG, PREFIX, SUFFIX)) == tokens + 2
    assert count_image_tokens(*size, mode, tile_size=tile) == tokens + 2


def test_split_selection():
    assert select_split(1000, 500, 490) == (1, 2)  # w/h = 2: 1 row, 2 columns
    assert select_split(500, 1000, 490) == (2, 1)
    assert select_split(2000, 1000, 490) == (2, 4)  # tie with 1x2, enough pixels for the larger grid
    assert select_split(3000, 1000, 490) == (1, 3)
    assert select_split(1000, 1000, 490) == (2, 2)
    assert select_split(4900, 490, 490) == (1, 8)  # widest entry
    assert len(SPLIT_RATIOS) == 19 and (1, 1) not in SPLIT_RATIOS


@pytest.mark.parametrize("size, max_size", [((520, 300), 490), ((300, 700), 980)])
def test_crops_match_transformers_processor(size, max_size):
    hf_proc = pytest.importorskip("transformers.models.aria.image_processing_pil_aria")
    image = _pil(*size, seed=1)
    ref = hf_proc.AriaImageProcessorPil()(images=[image], max_image_size=max_size, return_tensors="pt")
    pv, pm = ref["pixel_values"][0], ref["pixel_mask"][0]
    ours = process_image(image, "medium" if max_size == 490 else "high")
    crop = ours.crops[0]
    (h, w), = ours.grid
    # transformers' patch mask: a patch is real if any of its pixels is
    patch_mask = pm.unfold(0, 14, 14).unfold(1, 14, 14).sum((-1, -2)) > 0
    assert int(patch_mask[:, 0].sum()) == h and int(patch_mask[0].sum()) == w
    assert torch.equal(pv[:, : crop.shape[1], : crop.shape[2]], crop)  # padding included (-1)


def test_tensor_images_and_errors():
    img = torch.randint(0, 256, (3, 100, 250), dtype=torch.uint8)
    out = process_image(img, "medium")
    assert out.grid == [(24, 35)] and out.crops[0].min() >= -1 and out.crops[0].max() <= 1
    with pytest.raises(ValueError, match="mode"):
        process_image(img, "low")
