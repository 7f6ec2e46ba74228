"""A trained model back from a checkpoint, for evaluation and analysis tools (one process, CPU,
weights only): the run config saved beside the weights says what to build."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import torch.distributed.checkpoint as dcp

from aria_train.checkpoint import state as ckpt_state
from aria_train.checkpoint.layout import resolve_load_dir
from aria_train.errors import UserError
from aria_train.train.run_config import RunConfig, load_saved_run_config


def load_run_config(checkpoint_dir: Path) -> RunConfig:
    """The resolved config saved with a checkpoint (older keys dropped with a note)."""
    return load_saved_run_config(Path(checkpoint_dir) / "config.yaml")


def load_trained_model(checkpoint: str, text_only: bool = False, rope_base: Optional[float] = None):
    """(model, cfg) from `checkpoint` (a save directory with `latest`, or an iter_ directory).

    The stage's model as it was trained (the multimodal one for stages 2-4), or with text_only
    the decoder alone (a multimodal checkpoint's language model). rope_base overrides the saved
    base (e.g. to probe a stage-2 model at stage 3's base). CPU, eval mode."""
    from aria_train.data.tokenizer import load_tokenizer
    from aria_train.model.build import build_stage_model

    path = resolve_load_dir(checkpoint)
    cfg = load_run_config(path)
    if text_only:
        cfg.multimodal = False
    if rope_base is not None:
        cfg.model.rope_base = rope_base
    cfg.parallel.ep_size = 1
    tokenizer = load_tokenizer(cfg.data.tokenizer_model, cfg.data.tokenizer_type) if cfg.multimodal else None
    model = build_stage_model(cfg, tokenizer)
    model.to_empty(device="cpu")
    model.init_weights(cfg.train.seed)
    entries = ckpt_state.model_state(model)
    saved = set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata.keys())
    ckpt_state.map_decoder_keys(entries, saved)
    missing = [key for key in entries if key not in saved]
    if missing:
        raise UserError(f"checkpoint {path} lacks {len(missing)} of the model's tensors, e.g. {missing[0]}")
    with warnings.catch_warnings():  # "torch.distributed is disabled ... load in a single process"
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(entries, checkpoint_id=str(path))
    model.eval()
    return model, cfg
