"""data.image_split: transformers against transformers' AriaImageProcessor(split_image=True): the
same crops, crop for crop and pixel for pixel, for images of several sizes and aspect ratios;
the token count planned from the image size alone agrees; aria and transformers splits differ
where the issue says they do."""

import numpy as np
import pytest
import torch

from aria_train.data.image_split import best_fit_resolution, candidate_resolutions, split_transformers
from aria_train.data.image_tokens import process_image
from aria_train.data.multimodal.render import ImageConfig

PIL = pytest.importorskip("PIL.Image")
hf_proc = pytest.importorskip("transformers.models.aria.image_processing_pil_aria")


def _pil(width, height, seed):
    rng = np.random.default_rng(seed)
    return PIL.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _reference(image, max_size):
    proc = hf_proc.AriaImageProcessorPil(split_image=True, max_image_size=max_size)
    out = proc(images=[image], split_image=True, max_image_size=max_size, return_tensors="pt")
    return out["pixel_values"], out["pixel_mask"]


# (width, height): wide, tall, near-square, small (upscaled), very wide, odd sizes
SIZES = [(700, 450), (1200, 500), (300, 800), (123, 457), (2000, 260), (980, 1003)]


@pytest.mark.parametrize("size", SIZES)
def test_crops_match_aria_image_processor_490(size):
    image = _pil(*size, seed=sum(size))
    ref_pixels, ref_mask = _reference(image, 490)
    ours = split_transformers(image, tile=490, unit=490)
    assert ours.num_crops == ref_pixels.shape[0]
    cfg = ImageConfig(mode="ultra-high", split="transformers")
    assert cfg.num_crops(*size) == ours.num_crops  # planned from the header alone
    worst = 0.0
    for crop, (h, w), pixels, mask in zip(ours.crops, ours.grid, ref_pixels, ref_mask):
        # transformers' patch mask: a patch is real if any of its pixels is
        patches = mask.unfold(0, 14, 14).unfold(1, 14, 14).sum((-1, -2)) > 0
        assert int(patches[:, 0].sum()) == h and int(patches[0].sum()) == w
        worst = max(worst, (pixels[:, : crop.shape[1], : crop.shape[2]] - crop).abs().max().item())
    print(f"{size}: {ours.num_crops} crops {ours.split}, max |diff| {worst:.2e}")
    assert worst < 1e-6


@pytest.mark.parametrize("size", [(700, 450), (1500, 400)])
def test_crops_match_with_980_px_crops(size):
    # max_image_size=980 over 490 px grids: short last rows/columns, each crop rescaled to 980 px
    image = _pil(*size, seed=7)
    ref_pixels, _ = _reference(image, 980)
    ours = split_transformers(image, tile=980, unit=490, size_to_queries={490: 128, 980: 256})
    assert ours.num_crops == ref_pixels.shape[0] and ours.queries == 256
    for crop, pixels in zip(ours.crops, ref_pixels):
        assert (pixels[:, : crop.shape[1], : crop.shape[2]] - crop).abs().max().item() < 1e-6


def test_differs_from_the_aria_split_as_the_issue_says():
    for (width, height), ours_count, aria_count in [((700, 450), 2, 7), ((1200, 500), 6, 3)]:
        image = _pil(width, height, seed=1)
        assert split_transformers(image).num_crops == ours_count
        assert process_image(image, "ultra-high").num_crops == aria_count


def test_best_fit_prefers_kept_pixels_then_less_waste():
    resolutions = candidate_resolutions(490)
    assert best_fit_resolution(700, 450, resolutions) == (490, 980)  # 1x2 keeps it all, wastes least
    assert best_fit_resolution(1200, 500, resolutions) == (980, 1470)  # 2x3: no downscaling
    assert best_fit_resolution(100, 100, [(490, 980), (980, 490)]) == (490, 980)  # a tie keeps the first


def test_tensor_images_and_tiny_sizes():
    image = torch.randint(0, 256, (3, 45, 100), dtype=torch.uint8)
    ours = split_transformers(image, tile=70, unit=70, min_size=14, size_to_queries={70: 4})
    assert ours.split == (1, 2) and ours.grid == [(5, 5), (5, 5)] and ours.num_image_tokens == 8
    assert all(c.min() >= -1 and c.max() <= 1 for c in ours.crops)
