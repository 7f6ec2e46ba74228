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
    save_interval: Optional[int] = None
    keep_last: int = 3
    async_save: bool = False
    load_optim: bool = True
