"""Checkpoint conversion to and from other frameworks' formats."""

from aria_train.convert.hf_text import (
    aria_to_hf_state_dict,
    hf_text_config_from_model,
    hf_to_aria_state_dict,
    load_hf_checkpoint,
    model_config_from_hf,
    save_hf_checkpoint,
)

__all__ = [
    "aria_to_hf_state_dict",
    "hf_text_config_from_model",
    "hf_to_aria_state_dict",
    "load_hf_checkpoint",
    "model_config_from_hf",
    "save_hf_checkpoint",
]
