"""Configuration of saving and resuming (`checkpoint.*`)."""

from dataclasses import dataclass
from typing import Optional


@dataclass
class CheckpointConfig:
    save: str = ""
    load: str = ""  # resume a run (weights, optimizer, step, data position) from DIR/latest
    # Start a new stage from another run's final checkpoint: weights only, fresh optimizer,
    # step 0. Used when `load` has no checkpoint yet (a resumed stage continues its own run).
    init_from: str = ""
    # Start from a transformers Aria checkpoint directory (config.json + safetensors, as
    # save_pretrained writes it): weights only, fresh optimizer, step 0; model shapes come from its
    # config.json (aria_train.convert.hf_init). `--init-from-hf DIR` sets it.
    init_from_hf: str = ""
    save_interval: Optional[int] = None
    keep_last: int = 3
    async_save: bool = False
    load_optim: bool = True
