"""Distributed checkpoints: save, resume exactly, reshard across world size and EP size.

See aria_train.checkpoint.layout (directory format) and aria_train.checkpoint.state (keys)."""

from aria_train.checkpoint.checkpointer import Checkpointer
from aria_train.checkpoint.layout import FORMAT_NAME, FORMAT_VERSION, resolve_load_dir
from aria_train.checkpoint.parts import RunDescription, Stateful, TrainingParts

__all__ = ["Checkpointer", "FORMAT_NAME", "FORMAT_VERSION", "RunDescription", "Stateful", "TrainingParts",
           "resolve_load_dir"]
