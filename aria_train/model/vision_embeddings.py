"""The ViT's input embeddings: patches (2-D, or IMP's video tubelets) plus positions (ARIA's
bucketed 2-D table, or IMP's factorised time + height + width tables with dilated spatial rows).

Patch embedding (vision.patch):
  2d       Conv2d(C, D, p, stride p), applied as a matrix product to flattened (c, y, x) patches.
  tubelet  Conv3d(C, D, (f, p, p), stride (f, p, p)) over videos of up to vision.max_frames
           frames, applied to flattened (c, dt, dy, dx) tubelets. An image is a one-frame video
           repeated f times; a Conv3d over f equal frames is the Conv2d whose kernel is the sum
           of the f time slices, so images are embedded with that summed kernel on their 2-D
           patches (the same numbers as tiling them, f times less work).
Positions (vision.position_embedding):
  bucketed    one (image_size/p)^2 table, Idefics3's bucketing (vision_positions.py).
  factorized  time_embedding [max_frames/f] + height_embedding [side] + width_embedding [side],
              side = image_size / p buckets, dilated (vision_positions.dilated_positions);
              an image takes time row 0.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from aria_train.model.vision_config import VisionConfig
from aria_train.model.vision_positions import bucketed_position_ids, factorized_position_ids


class VisionEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_size = cfg.patch_size
        self.num_patches_per_side = side = cfg.num_patches_per_side
        p, D = cfg.patch_size, cfg.hidden_size
        if cfg.patch == "tubelet":
            f = cfg.tubelet_frames
            self.patch_embedding = nn.Conv3d(cfg.num_channels, D, (f, p, p), (f, p, p))
        else:
            self.patch_embedding = nn.Conv2d(cfg.num_channels, D, p, p)
        if cfg.position_embedding == "factorized":
            self.time_embedding = nn.Embedding(cfg.max_time_positions, D)
            self.height_embedding = nn.Embedding(side, D)
            self.width_embedding = nn.Embedding(side, D)
        else:
            self.position_embedding = nn.Embedding(side**2, D)

    @property
    def factorized(self) -> bool:
        return self.cfg.position_embedding == "factorized"

    def _image_kernel(self) -> torch.Tensor:
        """[D, C*p*p]: the 2-D kernel (tubelets: summed over the kernel's f frames)."""
        weight = self.patch_embedding.weight
        return (weight.sum(dim=2) if weight.dim() == 5 else weight).flatten(1)

    def forward(self, patches: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """patches [T, C*p*p], position_ids [T] into the bucketed table -> [T, D]"""
        kernel = self._image_kernel()
        x = F.linear(patches.to(kernel.dtype), kernel, self.patch_embedding.bias)
        return x + self.position_embedding(position_ids)

    def factorized_positions(self, grid3, device) -> torch.Tensor:
        """[(t, h, w)] -> [T, D]: time + height + width rows (dilated spatial rows)."""
        side, cfg = self.num_patches_per_side, self.cfg
        t, h, w = factorized_position_ids(grid3, side, side, cfg.max_time_positions, device)
        return self.time_embedding(t) + self.height_embedding(h) + self.width_embedding(w)

    def embed_images(self, patches: torch.Tensor, grid, position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """patches [T, C*p*p], grid [(h, w)] -> [T, D]; position_ids (bucketed only) default from grid."""
        if not self.factorized:
            if position_ids is None:
                position_ids = bucketed_position_ids(grid, self.num_patches_per_side, patches.device)
            return self(patches, position_ids)
        kernel = self._image_kernel()
        x = F.linear(patches.to(kernel.dtype), kernel, self.patch_embedding.bias)
        return x + self.factorized_positions([(1, h, w) for h, w in grid], patches.device)

    def embed_videos(self, tubelets: torch.Tensor, grid3) -> torch.Tensor:
        """tubelets [T, C*f*p*p], grid3 [(t, h, w)] -> [T, D]."""
        if self.cfg.patch != "tubelet":
            raise ValueError("videos need vision.patch=tubelet")
        weight = self.patch_embedding.weight.flatten(1)
        x = F.linear(tubelets.to(weight.dtype), weight, self.patch_embedding.bias)
        return x + self.factorized_positions(grid3, tubelets.device)
