"""Does the model look at the pixels? Caption loss with the real images against the same
captions with every image replaced by a blank (black) one of the same size.

The synthetic captions (shapes, colours, counts, sides) can only be known by looking, so a model
that uses its vision tower has a clearly lower loss with the real images; one that ignores them
scores the same either way.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from dataclasses import dataclass

import torch

from aria_train.data.multimodal import ImageConfig, SampleRenderer, read_shard, write_synthetic_shards
from aria_train.model.vision import pack_images
from aria_train.train.loss import chunked_cross_entropy_sum


@dataclass
class PixelProbe:
    real_loss: float  # mean caption-token loss with the real images
    blank_loss: float  # the same captions, images blanked
    samples: int
    caption_tokens: int


@torch.no_grad()
def caption_loss_real_vs_blank(model, cfg, tokenizer, num_samples: int = 64, seed: int = 9_999) -> PixelProbe:
    """Held-out synthetic caption samples (a seed the demo shards never use), one at a time."""
    image_cfg = ImageConfig.from_projector(cfg.projector, patch_size=cfg.vision.patch_size, mode=cfg.data.image_mode)
    renderer = SampleRenderer(tokenizer, image_cfg)
    totals = {"real": 0.0, "blank": 0.0}
    tokens_counted = 0
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_shards(tmp, num_samples, seed=seed, kind="caption")
        shards = sorted(Path(tmp).glob("*.tar"))
        samples = [raw for shard in shards for _, raw in read_shard(str(shard))]
        for raw in samples:
            plan = renderer.plan(raw)
            tokens = torch.from_numpy(plan.tokens[:-1].copy()).unsqueeze(0)
            labels = torch.from_numpy(plan.tokens[1:].copy())
            mask = torch.from_numpy(plan.target[1:].astype("float32"))
            real = [c for image in plan.images for c in renderer.load_crops(image).crops]
            blank = [c for image in plan.images for c in renderer.blank_crops(image).crops]
            for name, crops in (("real", real), ("blank", blank)):
                patches, grid = pack_images(crops, image_cfg.patch_size)
                out = model(tokens, patches=patches, grid=grid)
                totals[name] += chunked_cross_entropy_sum(out.hidden[0], model.lm_head.weight, labels, mask).item()
            tokens_counted += int(mask.sum())
    return PixelProbe(totals["real"] / tokens_counted, totals["blank"] / tokens_counted, len(samples), tokens_counted)
