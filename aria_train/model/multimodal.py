"""The multimodal ARIA model: ViT -> projector -> image features written into the text
embeddings at the `<|img|>` positions -> MoE decoder.

Numerically transformers' AriaForConditionalGeneration (tests/vision/test_hf_parity.py);
parameter names follow it (vision_tower.*, multi_modal_projector.*, language_model.* with our
decoder's names inside; see aria_train.convert.hf_multimodal).

Images come as one packed patch tensor for the whole micro-batch (see
aria_train.model.vision.pack_images): image i's features fill the next Q_i `<|img|>` positions
in row-major (batch, sequence) order, so crops must appear in the text in the order they are
packed.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from aria_train.model.config import ModelConfig
from aria_train.model.vision_config import ProjectorConfig, VisionConfig
from aria_train.model.attention import DocumentMask
from aria_train.model.decoder import AriaForCausalLM, DecoderOutput
from aria_train.model.projector import Projector
from aria_train.model.vision import Grid, VisionTransformer
from aria_train.nn.image_patches import grid_list


class AriaForConditionalGeneration(nn.Module):
    def __init__(self, cfg: ModelConfig, vision: VisionConfig, projector: ProjectorConfig, image_token_id: int):
        super().__init__()
        projector.validate(vision)
        if not 0 <= image_token_id < cfg.vocab_size:
            raise ValueError(f"image_token_id={image_token_id} is outside the vocabulary ({cfg.vocab_size})")
        self.cfg = cfg
        self.vision_cfg = vision
        self.projector_cfg = projector
        self.image_token_id = image_token_id
        self.vision_tower = VisionTransformer(vision)
        self.multi_modal_projector = Projector(vision.hidden_size, cfg.hidden_size, vision.num_heads, projector)
        self.language_model = AriaForCausalLM(cfg)

    @property
    def lm_head(self) -> nn.Linear:
        return self.language_model.lm_head

    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> None:
        self.language_model.init_weights(seed)
        self.vision_tower.init_weights(seed)
        self.multi_modal_projector.init_weights(seed)

    def image_features(self, patches: torch.Tensor, grid: Grid) -> torch.Tensor:
        """patches [T, C*p*p] packed, grid [(h_i, w_i)] -> [sum_i Q_i, hidden] (decoder width).

        vision.activation_checkpointing="crops" (training): the ViT and projector run on groups
        of vision.checkpoint_crops crops, each group a checkpoint region that keeps only its
        pixels and is recomputed in backward on its own. Crops are independent in both (attention
        stays inside a crop), so the features are the same as in one pass."""
        grid = grid_list(grid)
        group = self.vision_cfg.checkpoint_crops
        if not (self.vision_cfg.activation_checkpointing == "crops" and self.training and torch.is_grad_enabled()):
            return self._features(patches, grid)
        out, start = [], 0
        for first in range(0, len(grid), group):
            crops = grid[first : first + group]
            end = start + sum(h * w for h, w in crops)
            out.append(checkpoint(self._features, patches[start:end], crops, use_reentrant=False))
            start = end
        return torch.cat(out)

    def _features(self, patches: torch.Tensor, grid: list) -> torch.Tensor:
        return self.multi_modal_projector(self.vision_tower(patches, grid), grid)

    def embed(
        self, tokens: torch.Tensor, patches: Optional[torch.Tensor] = None, grid: Optional[Grid] = None
    ) -> torch.Tensor:
        """tokens [B, S] -> embeddings [B, S, H] with image features at the image-token positions."""
        embeds = self.language_model.embed_tokens(tokens)
        image_mask = tokens == self.image_token_id
        if patches is None:
            if bool(image_mask.any()):
                raise ValueError(f"{int(image_mask.sum())} image tokens but no images were given")
            return embeds
        features = self.image_features(patches, grid)
        n_tokens = int(image_mask.sum())
        if n_tokens != features.shape[0]:
            raise ValueError(f"{n_tokens} image tokens in the text but the images give {features.shape[0]} features")
        return embeds.masked_scatter(image_mask.unsqueeze(-1), features.to(embeds.dtype))

    def forward(
        self,
        tokens: torch.Tensor,
        position_ids: Optional[torch.Tensor] = None,
        patches: Optional[torch.Tensor] = None,
        grid: Optional[Grid] = None,
        document_mask: Optional[DocumentMask] = None,
    ) -> DecoderOutput:
        """tokens [B, S]; position_ids [B, S]; patches [T, C*p*p] and grid [(h_i, w_i)] for the
        images of the whole micro-batch (or None); document_mask (None = plain causal) ->
        DecoderOutput (hidden [B, S, H] after the final norm, balance and z losses)."""
        embeds = self.embed(tokens, patches, grid)
        return self.language_model(position_ids=position_ids, inputs_embeds=embeds, document_mask=document_mask)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] -> [..., vocab]. Only for small inputs: training uses the chunked loss."""
        return self.language_model.logits(hidden)

    def expert_modules(self):
        return self.language_model.expert_modules()


def build_multimodal_model(
    cfg: ModelConfig,
    vision: VisionConfig,
    projector: ProjectorConfig,
    image_token_id: int,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> AriaForConditionalGeneration:
    """Builds and initialises the model. On device="meta" nothing is allocated."""
    with torch.device(device):
        model = AriaForConditionalGeneration(cfg, vision, projector, image_token_id)
    if str(device) != "meta":
        model.init_weights(seed)
    return model


__all__ = ["AriaForConditionalGeneration", "build_multimodal_model"]
