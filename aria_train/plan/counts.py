"""What a stage trains, counted on the meta device: the decoder, the ViT and the projector
separately, what `train.freeze` leaves trainable, and the parameters one text token and one
visual token run through."""

from __future__ import annotations

from dataclasses import dataclass, field

from aria_train.accounting import ParameterCounts, count_parameters
from aria_train.model.decoder import build_model
from aria_train.model.freeze import is_frozen
from aria_train.moe.experts import expert_parameter_layouts

_VISION, _PROJECTOR, _TEXT = "vision_tower.", "multi_modal_projector.", "language_model."


@dataclass
class StageCounts:
    decoder: ParameterCounts
    vision: int  # ViT (its unused post_layernorm included: it is in the checkpoints)
    projector: int
    input_embedding: int
    lm_head: int
    sizes: dict  # parameter name -> elements (the stage model's names)
    experts: set  # names of the routed-expert parameters
    _trainable: dict = field(default_factory=dict, repr=False)  # freeze groups -> ParameterCounts

    @property
    def total(self) -> int:
        return self.decoder.total + self.vision + self.projector

    @property
    def all(self) -> ParameterCounts:
        """Every parameter of the stage's model, as the per-rank byte model takes them."""
        return ParameterCounts(self.total, self.decoder.routed_experts, self.decoder.embeddings,
                               self.decoder.active_per_token)

    def trainable(self, freeze=()) -> ParameterCounts:
        """The parameters that take a gradient when the groups `freeze` are frozen (total and
        routed part; what the gradient buffers and optimizer state are sized by)."""
        key = tuple(sorted(freeze))
        if key not in self._trainable:
            kept = [n for n in self.sizes if not is_frozen(n, key)]
            self._trainable[key] = ParameterCounts(sum(self.sizes[n] for n in kept),
                                                   sum(self.sizes[n] for n in kept if n in self.experts), 0, 0)
        return self._trainable[key]

    def vision_trainable(self, freeze=()) -> int:
        """ViT + projector parameters that take a gradient."""
        return sum(v for n, v in self.sizes.items() if n.startswith((_VISION, _PROJECTOR)) and not is_frozen(n, freeze))

    @property
    def active_text(self) -> int:
        """Dense decoder + top_k / E of the routed experts, embedding and LM head included."""
        return self.decoder.active_per_token

    @property
    def active_text_without_embeddings(self) -> int:
        return self.decoder.active_per_token - self.input_embedding - self.lm_head

    @property
    def active_visual(self) -> int:
        """A visual token skips the input embedding (its features come from the ViT and the
        projector) and runs everything else a text token does."""
        return self.decoder.active_per_token - self.input_embedding + self.vision + self.projector

    @property
    def active_visual_without_embeddings(self) -> int:
        return self.active_visual - self.lm_head


def count_stage(cfg) -> StageCounts:
    """Counts for a RunConfig (`multimodal`, `model`, `vision`, `projector`)."""
    if cfg.multimodal:
        from aria_train.model.multimodal import build_multimodal_model

        model = build_multimodal_model(cfg.model, cfg.vision, cfg.projector, image_token_id=0, device="meta")
        decoder = model.language_model
    else:
        model = decoder = build_model(cfg.model, device="meta")
    sizes = {name: p.numel() for name, p in model.named_parameters()}
    experts = {(_TEXT + n if cfg.multimodal else n) for n in expert_parameter_layouts(decoder)}
    return StageCounts(
        decoder=count_parameters(decoder, cfg.model),
        vision=sum(v for n, v in sizes.items() if n.startswith(_VISION)),
        projector=sum(v for n, v in sizes.items() if n.startswith(_PROJECTOR)),
        input_embedding=decoder.embed_tokens.weight.numel(),
        lm_head=decoder.lm_head.weight.numel(),
        sizes=sizes,
        experts=experts,
    )
