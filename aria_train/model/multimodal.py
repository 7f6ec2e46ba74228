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

import dataclasses
from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from aria_train.model.config import ModelConfig
from aria_train.model.vision_config import ProjectorConfig, VisionConfig
from aria_train.model.attention import DocumentMask
from aria_train.model.decoder import AriaForCausalLM, DecoderOutput
from aria_train.model.projector import Projector
from aria_train.model.vision import Grid, VisionOutput, VisionTransformer
from aria_train.nn.image_patches import grid_list, run_by_crop_groups
from aria_train.nn.media import AUDIO, IMAGE, VIDEO, MediaBatch


class AriaForConditionalGeneration(nn.Module):
    def __init__(self, cfg: ModelConfig, vision: VisionConfig, projector: ProjectorConfig, image_token_id: int,
                 audio=None):
        super().__init__()
        projector.validate(vision)
        if not 0 <= image_token_id < cfg.vocab_size:
            raise ValueError(f"image_token_id={image_token_id} is outside the vocabulary ({cfg.vocab_size})")
        self.cfg = cfg
        self.vision_cfg = vision
        self.projector_cfg = projector
        self.audio_cfg = audio  # aria_train.model.audio.AudioConfig or None
        self.image_token_id = image_token_id
        self.vision_tower = VisionTransformer(vision, audio)
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
        return run_by_crop_groups(self._features, patches, grid, group)

    def _features(self, patches: torch.Tensor, grid: list) -> torch.Tensor:
        return self.multi_modal_projector(self.vision_tower(patches, grid), grid)

    def media_queries(self, media: MediaBatch) -> list[int]:
        """Projector queries (= `<|img|>` tokens) of every item in media order: an image or a video
        by its spatial grid, an audio clip audio.queries."""
        grids = {IMAGE: iter(media.grid), VIDEO: iter((h, w) for _, h, w in media.video_grid)}
        queries = []
        for kind in media.order:
            if kind == AUDIO:
                queries.append(self.audio_cfg.queries_for(self.projector_cfg))
            else:
                queries.append(self.multi_modal_projector.queries_for(*next(grids[kind])))
        return queries

    def media_features(self, media: MediaBatch) -> tuple[torch.Tensor, VisionOutput]:
        """Every item of `media` -> ([sum of its queries, hidden], the encoder's output). An empty
        `media` still runs the encoder (with experts, the EP group needs every rank) and returns
        no features.

        vision.activation_checkpointing="crops" (training): images only -> image_features' groups
        of crops; with videos or audio the encoder and projector are one region that keeps only
        their inputs (VisionConfig refuses crops with encoder experts: a recompute per group
        would run the EP all-to-alls a different number of times on each rank)."""
        if not (self.vision_cfg.activation_checkpointing == "crops" and self.training and torch.is_grad_enabled()
                and len(media)):
            return self._media_features(media)
        if len(media.grid) == len(media):
            features = self.image_features(media.patches, media.grid)
            zero = features.new_zeros((), dtype=torch.float32)
            return features, VisionOutput(features[:0], [h * w for h, w in media.grid], zero, zero)
        features, lengths = checkpoint(self._media_features_only, media, use_reentrant=False)
        zero = features.new_zeros((), dtype=torch.float32)
        return features, VisionOutput(features[:0], lengths, zero, zero)

    def _media_features_only(self, media: MediaBatch) -> tuple[torch.Tensor, list]:
        features, encoded = self._media_features(media)
        return features, encoded.lengths

    def _media_features(self, media: MediaBatch) -> tuple[torch.Tensor, VisionOutput]:
        encoded = self.vision_tower.encode(media)
        if not encoded.lengths:
            return encoded.features.new_zeros(0, self.cfg.hidden_size), encoded
        features = self.multi_modal_projector(encoded.features, None, self.media_queries(media), encoded.lengths)
        return features, encoded

    def embed(
        self, tokens: torch.Tensor, patches: Optional[torch.Tensor] = None, grid: Optional[Grid] = None, **media
    ) -> torch.Tensor:
        """tokens [B, S] -> embeddings [B, S, H] with image features at the image-token positions."""
        return self._embed(tokens, MediaBatch(patches, grid or [], **media))[0]

    def _embed(self, tokens: torch.Tensor, media: MediaBatch) -> tuple[torch.Tensor, Optional[VisionOutput]]:
        embeds = self.language_model.embed_tokens(tokens)
        image_mask = tokens == self.image_token_id
        if len(media) == 0 and not self.vision_tower.has_experts:
            if bool(image_mask.any()):
                raise ValueError(f"{int(image_mask.sum())} image tokens but no images were given")
            return embeds, None
        features, encoded = self.media_features(media)
        n_tokens = int(image_mask.sum())
        if n_tokens != features.shape[0]:
            raise ValueError(f"{n_tokens} image tokens in the text but the images give {features.shape[0]} features")
        embeds = embeds.masked_scatter(image_mask.unsqueeze(-1), features.to(embeds.dtype))
        if len(media) == 0:  # keep the encoder in the graph: its backward all-to-alls run on every rank
            embeds = embeds + 0 * encoded.features.sum().to(embeds.dtype)
        return embeds, encoded

    def forward(
        self,
        tokens: torch.Tensor,
        position_ids: Optional[torch.Tensor] = None,
        patches: Optional[torch.Tensor] = None,
        grid: Optional[Grid] = None,
        document_mask: Optional[DocumentMask] = None,
        **media,
    ) -> DecoderOutput:
        """tokens [B, S]; position_ids [B, S]; patches [T, C*p*p] and grid [(h_i, w_i)] for the
        images of the whole micro-batch (or None), and with IMP's options the other items of
        aria_train.nn.media (video_patches, video_grid, audio_patches, audio_grid, media_order);
        document_mask (None = plain causal)
        -> DecoderOutput (hidden [B, S, H] after the final norm; balance and z losses of the
        decoder and the encoder's MoE layers; encoder_router_stats)."""
        embeds, encoded = self._embed(tokens, MediaBatch(patches, grid or [], **media))
        out = self.language_model(position_ids=position_ids, inputs_embeds=embeds, document_mask=document_mask)
        if encoded is None:
            return out
        return dataclasses.replace(out, balance_loss=out.balance_loss + encoded.balance_loss,
                                   z_loss=out.z_loss + encoded.z_loss, encoder_router_stats=encoded.router_stats)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] -> [..., vocab]. Only for small inputs: training uses the chunked loss."""
        return self.language_model.logits(hidden)

    def expert_modules(self):
        """The decoder's routed experts (what HF export covers); the encoder's, if any, are in
        aria_train.moe.experts.expert_parameter_layouts like every expert."""
        return self.language_model.expert_modules()


def build_multimodal_model(
    cfg: ModelConfig,
    vision: VisionConfig,
    projector: ProjectorConfig,
    image_token_id: int,
    device: str | torch.device = "cpu",
    seed: int = 0,
    audio=None,
) -> AriaForConditionalGeneration:
    """Builds and initialises the model. On device="meta" nothing is allocated."""
    with torch.device(device):
        model = AriaForConditionalGeneration(cfg, vision, projector, image_token_id, audio)
    if str(device) != "meta":
        model.init_weights(seed)
    return model


__all__ = ["AriaForConditionalGeneration", "build_multimodal_model"]
