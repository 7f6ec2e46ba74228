"""Held-out evaluation of a stage-0 checkpoint (tools/eval_encoder.py): the run's own datasets
and held-out split, read back from the config saved with the checkpoint, one process on CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from aria_train.checkpoint.layout import resolve_load_dir
from aria_train.data.encoder.build import ImageSettings, build_encoder_data
from aria_train.data.multimodal.render import ImageConfig
from aria_train.data.tokenizer import load_tokenizer
from aria_train.errors import UserError
from aria_train.eval.trained_model import load_run_config, load_trained_model
from aria_train.train.encoder.evaluation import evaluate_encoder


def evaluate_checkpoint(checkpoint: str, cache_dir: Optional[str] = None, batch_size: int = 64) -> tuple[dict, dict]:
    """(metrics keyed `<dataset>/<metric>`, facts: the checkpoint dir, iteration and held-out
    sizes) of a stage-0 checkpoint. cache_dir: where the run's synthetic demo data is (default:
    the run's data.cache_dir, relative to the working directory)."""
    path = resolve_load_dir(checkpoint)
    cfg = load_run_config(path)
    if cfg.stage != 0:
        raise UserError(f"checkpoint {path} is a stage-{cfg.stage} run, not stage 0 (encoder pretraining)")
    tokenizer = load_tokenizer(cfg.data.tokenizer_model, cfg.data.tokenizer_type)
    crops = ImageConfig.from_projector(cfg.projector, patch_size=cfg.vision.patch_size)
    image = ImageSettings(crops.resolutions["medium"], crops.effective_min_size, cfg.vision.patch_size)
    enc = cfg.encoder
    data = build_encoder_data(enc.datasets, enc.pairs, enc.schedule, enc.prompts, enc.text.max_length, tokenizer,
                              image, cache_dir or cfg.data.cache_dir, cfg.data.max_bad_fraction, cfg.train.seed)
    model, _ = load_trained_model(str(path), class_counts=data.class_counts)
    with torch.no_grad():
        metrics = evaluate_encoder(model, data, enc.text.max_length, batch_size, torch.device("cpu"))
    facts = {"checkpoint": str(path), "held_out": {n: len(d.eval_ids) for n, d in data.datasets.items()},
             "iteration": int(Path(path).name.split("_")[-1]) if Path(path).name.startswith("iter_") else None}
    return metrics, facts
