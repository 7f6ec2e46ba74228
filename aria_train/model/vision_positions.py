"""Position ids of the ViT's patches.

bucketed_position_ids: Idefics3's (and so ARIA's) one 2-D table of side x side positions; an
h x w image takes the cells its fractional coordinates fall into.
"""

from __future__ import annotations

import functools

import torch

from aria_train.nn.image_patches import Grid, grid_list


@functools.lru_cache(maxsize=4096)
def _bucketed_positions_cpu(h: int, w: int, side: int) -> torch.Tensor:
    # Same float32 arithmetic as Idefics3VisionEmbeddings.forward, so the buckets are identical.
    boundaries = torch.arange(1 / side, 1.0, 1 / side, dtype=torch.float32)
    frac_h = torch.arange(h, dtype=torch.float32) * (1.0 / torch.tensor(h))
    frac_w = torch.arange(w, dtype=torch.float32) * (1.0 / torch.tensor(w))
    frac_h = torch.clamp(frac_h, max=1.0 - 1e-6)
    frac_w = torch.clamp(frac_w, max=1.0 - 1e-6)
    bucket_h = torch.bucketize(frac_h, boundaries, right=True)
    bucket_w = torch.bucketize(frac_w, boundaries, right=True)
    return (bucket_h[:, None] * side + bucket_w[None, :]).reshape(-1)


def bucketed_position_ids(grid: Grid, side: int, device=None) -> torch.Tensor:
    """grid [(h, w)] -> position ids [sum h*w] into a side x side position table (Idefics3's
    bucketing: patch (i, j) of an h x w image takes grid cell (floor-bucket(i/h), floor-bucket(j/w)))."""
    ids = []
    for h, w in grid_list(grid):
        if not (1 <= h <= side and 1 <= w <= side):
            raise ValueError(f"image of {h}x{w} patches does not fit the {side}x{side} position grid")
        ids.append(_bucketed_positions_cpu(h, w, side))
    return torch.cat(ids).to(device) if ids else torch.zeros(0, dtype=torch.long, device=device)


# ---- factorised positions (vision.position_embedding: factorized) ------------------------------
#
# IMP (arXiv 2305.06324) embeds positions as the sum of a time, a height and a width table, and
# spreads a short axis over a long table ("dilated" positions): an axis of B buckets (table rows)
# covering P patches takes the rows at stride B / P, row floor(i * B / P) for patch i. P = B uses
# every row; P = B / 2 uses rows 0, 2, 4, ...; so a 2x larger resolution subdivides the positions
# of a smaller one instead of extending them. Time is not dilated: tubelet i takes row i, and a
# video longer than the table is truncated (the data side keeps at most vision.max_frames).


def dilated_positions(patches: int, buckets: int) -> torch.Tensor:
    """Rows of a `buckets`-row table for `patches` patches along one axis: floor(i * B / P)."""
    if not 1 <= patches <= buckets:
        raise ValueError(f"{patches} patches along an axis do not fit its {buckets} position buckets")
    return torch.div(torch.arange(patches) * buckets, patches, rounding_mode="floor")


@functools.lru_cache(maxsize=4096)
def _factorized_cpu(t: int, h: int, w: int, buckets_h: int, buckets_w: int, max_time: int) -> torch.Tensor:
    if not 1 <= t <= max_time:
        raise ValueError(f"{t} time positions exceed the time table of {max_time} (truncate the video)")
    rows_h, rows_w = dilated_positions(h, buckets_h), dilated_positions(w, buckets_w)
    time = torch.arange(t).view(t, 1, 1).expand(t, h, w)
    height = rows_h.view(1, h, 1).expand(t, h, w)
    width = rows_w.view(1, 1, w).expand(t, h, w)
    return torch.stack([time.reshape(-1), height.reshape(-1), width.reshape(-1)])


def factorized_position_ids(grid3, buckets_h: int, buckets_w: int, max_time: int, device=None) -> torch.Tensor:
    """grid3 [(t, h, w)] -> [3, sum t*h*w] rows of the time, height and width tables, tokens in
    (t, y, x) row-major order per item (an image is (1, h, w))."""
    if not grid3:
        return torch.zeros(3, 0, dtype=torch.long, device=device)
    ids = [_factorized_cpu(int(t), int(h), int(w), buckets_h, buckets_w, max_time) for t, h, w in grid3]
    return torch.cat(ids, dim=1).to(device)
