"""The model a stage trains, built on the meta device (parallelism and weights come after)."""

from torch import nn

from aria_train.model.decoder import build_model


def build_stage_model(cfg, tokenizer) -> nn.Module:
    """Stage 1: the text decoder. Stages with images: ViT + projector + decoder.

    `cfg` is a run's config (aria_train.train.run_config.RunConfig): `multimodal`, `model`,
    `vision`, `projector` and `audio` are read."""
    if not cfg.multimodal:
        return build_model(cfg.model, device="meta")
    from aria_train.model.multimodal import build_multimodal_model

    return build_multimodal_model(cfg.model, cfg.vision, cfg.projector, image_token_id=tokenizer.img, device="meta",
                                  audio=cfg.audio)
