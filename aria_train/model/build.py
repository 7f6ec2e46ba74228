"""The model a stage trains, built on the meta device (parallelism and weights come after)."""

from torch import nn

from aria_train.model.decoder import build_model


def build_stage_model(cfg, tokenizer, class_counts=None) -> nn.Module:
    """Stage 1: the text decoder. Stages with images: ViT + projector + decoder. Stage 0: ViT +
    text tower + contrastive and classifier heads (class_counts: labelled dataset -> classes).

    `cfg` is a run's config (aria_train.train.run_config.RunConfig): `stage`, `multimodal`,
    `model`, `vision`, `projector`, `audio` and `encoder` are read."""
    if cfg.stage == 0:
        from aria_train.model.dual_encoder import build_dual_encoder

        return build_dual_encoder(cfg.vision, cfg.encoder.text, cfg.model.vocab_size, cfg.model.hidden_size,
                                  class_counts or {}, cfg.encoder.init_temperature, device="meta")
    if not cfg.multimodal:
        return build_model(cfg.model, device="meta")
    from aria_train.model.multimodal import build_multimodal_model

    return build_multimodal_model(cfg.model, cfg.vision, cfg.projector, image_token_id=tokenizer.img, device="meta",
                                  audio=cfg.audio)
