"""Stage 0's model: the ViT that stage 2 takes over, a text tower, and the heads of the
alternating objectives (IMP, arXiv 2305.06324).

    images -> vision_tower (the stage-2 ViT, any vision config) -> mean over each image's patches
           -> image_projection (Linear, GELU, Linear) -> [B, H] image embedding
           \\-> classifiers[dataset] (Linear) -> [B, classes] for softmax classification
    texts  -> text_tower (aria_train.model.text_encoder) -> mean over each text's tokens
           -> text_projection (Linear, GELU, Linear) -> [B, H] text embedding
    logit_scale: log of the inverse temperature of the contrastive logits (CLIP's init 1/0.07)

H (the common space) is the decoder's hidden size. Parameter names: `vision_tower.*` as in the
multimodal model, so stage 2's `vision.init_from` reads them from a stage-0 checkpoint under the
same names. The ViT's output is taken before its post_layernorm, as ARIA takes it.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from aria_train.model.text_encoder import TextEncoder, TextEncoderConfig, init_linear_stack_
from aria_train.model.vision import Grid, VisionTransformer
from aria_train.model.vision_config import VisionConfig
from aria_train.nn.image_patches import grid_list, run_by_crop_groups
from aria_train.nn.media import MediaBatch


class ProjectionHead(nn.Module):
    """Two-layer GELU MLP: [B, d_in] -> [B, d_out]."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_out)
        self.fc2 = nn.Linear(d_out, d_out)

    def forward(self, x_BD: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x_BD)))


def segment_mean(x_TD: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """Packed rows x_TD [T, D] of segments of `lengths` -> their means [n, D] (global average
    pooling per image or text)."""
    lengths_N = torch.as_tensor(list(lengths), device=x_TD.device)
    segment_T = torch.repeat_interleave(torch.arange(len(lengths_N), device=x_TD.device), lengths_N)
    sums_ND = torch.zeros(len(lengths_N), x_TD.shape[1], dtype=x_TD.dtype, device=x_TD.device)
    sums_ND.index_add_(0, segment_T, x_TD)
    return sums_ND / lengths_N.unsqueeze(1).to(x_TD.dtype)


class DualEncoder(nn.Module):
    def __init__(self, vision: VisionConfig, text: TextEncoderConfig, vocab_size: int, embed_dim: int,
                 classes: Mapping[str, int], init_temperature: float = 0.07):
        super().__init__()
        self.vision_cfg = vision  # what aria_train.convert's init_vision_tower reads
        self.text_cfg = text
        self.init_temperature = float(init_temperature)
        self.vision_tower = VisionTransformer(vision)
        self.text_tower = TextEncoder(text, vocab_size)
        self.image_projection = ProjectionHead(vision.hidden_size, embed_dim)
        self.text_projection = ProjectionHead(text.hidden_size, embed_dim)
        self.logit_scale = nn.Parameter(torch.empty(1))
        self.classifiers = nn.ModuleDict({name: nn.Linear(vision.hidden_size, int(n)) for name, n in classes.items()})

    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> None:
        self.vision_tower.init_weights(seed)
        self.text_tower.init_weights(seed)
        for name in ("image_projection", "text_projection", "classifiers"):
            init_linear_stack_(getattr(self, name), None, seed, name + ".")
        self.logit_scale.fill_(math.log(1.0 / self.init_temperature))

    def pooled_images(self, patches: torch.Tensor, grid: Grid) -> torch.Tensor:
        """patches [T, C*p*p] packed, grid [(h_i, w_i)] -> [B, vision hidden]: each image's mean
        ViT feature (see pooled_images_and_aux)."""
        return self.pooled_images_and_aux(patches, grid)[0]

    def pooled_images_and_aux(self, patches: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (pooled [B, vision hidden], aux []: the ViT's MoE balance + z-losses with their
        coefficients, 0 without vision.moe).

        vision.activation_checkpointing="crops" (training): the ViT runs on groups of
        vision.checkpoint_crops images, each group a checkpoint region that keeps only its pixels
        and pooled features, recomputed in backward on its own ("layer" is the ViT's own). The
        config refuses crops with vision.moe, so there the aux loss is 0."""
        grid = grid_list(grid)
        group = self.vision_cfg.checkpoint_crops
        if not (self.vision_cfg.activation_checkpointing == "crops" and self.training and torch.is_grad_enabled()):
            return self._pooled_and_aux(patches, grid)
        return run_by_crop_groups(self._pooled, patches, grid, group), patches.new_zeros((), dtype=torch.float32)

    def _pooled(self, patches: torch.Tensor, grid: list) -> torch.Tensor:
        return self._pooled_and_aux(patches, grid)[0]

    def _pooled_and_aux(self, patches: torch.Tensor, grid: list) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.vision_tower.encode(MediaBatch(patches, grid))
        return segment_mean(encoded.features, encoded.lengths), encoded.balance_loss + encoded.z_loss

    def embed_images(self, patches: torch.Tensor, grid: Grid) -> torch.Tensor:
        """-> [B, H] image embeddings (not normalised)."""
        return self.embed_images_and_aux(patches, grid)[0]

    def embed_images_and_aux(self, patches: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ([B, H] image embeddings, the ViT's MoE aux loss [])."""
        pooled, aux = self.pooled_images_and_aux(patches, grid)
        return self.image_projection(pooled), aux

    def embed_texts(self, tokens_T: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        """tokens_T [T] packed, lengths [B] -> [B, H] text embeddings (not normalised)."""
        return self.text_projection(segment_mean(self.text_tower(tokens_T, lengths), lengths))

    def classify(self, dataset: str, pooled_BD: torch.Tensor) -> torch.Tensor:
        """pooled image features [B, vision hidden] -> [B, classes of `dataset`] logits."""
        return self.classifiers[dataset](pooled_BD)


def build_dual_encoder(vision: VisionConfig, text: TextEncoderConfig, vocab_size: int, embed_dim: int,
                       classes: Mapping[str, int], init_temperature: float = 0.07,
                       device: str | torch.device = "cpu", seed: int = 0) -> DualEncoder:
    """Builds (and, off the meta device, initialises) the stage-0 model."""
    with torch.device(device):
        model = DualEncoder(vision, text, vocab_size, embed_dim, classes, init_temperature)
    if str(device) != "meta":
        model.init_weights(seed)
    return model
