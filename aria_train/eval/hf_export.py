"""A trained checkpoint as a transformers model directory: train -> export -> evaluate.

    export_checkpoint("runs/my-run", "hf/my-run")    # or runs/my-run/checkpoints/iter_0000200

reads our distributed checkpoint directly (whatever world size and expert-parallel size wrote
it: DCP gathers every global expert into one process, on CPU), builds the stage's model from the
config saved with it and writes

    config.json, model.safetensors   AriaTextForCausalLM (stage 1) or AriaForConditionalGeneration
                                     (stages 2-4), which AutoModelForCausalLM.from_pretrained /
                                     AriaForConditionalGeneration.from_pretrained load
    tokenizer.json, tokenizer_config.json
                                     the run's sentencepiece tokenizer (aria_train.convert.hf_tokenizer),
                                     for AutoTokenizer.from_pretrained
The weights are renamed only (fp32 as trained, or cast with `dtype`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from aria_train.checkpoint.layout import read_metadata, resolve_load_dir
from aria_train.convert import hf_multimodal, hf_text
from aria_train.convert.hf_tokenizer import fast_tokenizer
from aria_train.data.tokenizer import load_tokenizer
from aria_train.eval.trained_model import load_trained_model


def export_checkpoint(checkpoint: str, output: str, dtype: Optional[torch.dtype] = None) -> dict:
    """Writes the transformers directory `output`; returns what was exported (for the log line)."""
    path = resolve_load_dir(checkpoint, "--checkpoint")
    model, cfg = load_trained_model(str(path))
    tokenizer = load_tokenizer(cfg.data.tokenizer_model)
    converted = fast_tokenizer(tokenizer)  # checked before anything is written
    if dtype is not None:
        model = model.to(dtype)
    config_overrides = dict(bos_token_id=None, eos_token_id=tokenizer.eod, pad_token_id=tokenizer.pad,
                            max_position_embeddings=cfg.data.seq_length)
    if cfg.multimodal:
        hf_multimodal.save_hf_checkpoint(model, output, **config_overrides)
        architecture = "AriaForConditionalGeneration"
    else:
        hf_text.save_hf_checkpoint(model, output, **config_overrides)
        architecture = "AriaTextForCausalLM"
    converted.save_pretrained(output)
    meta = read_metadata(path)
    return {"checkpoint": str(path), "iteration": meta.get("iteration"), "stage": cfg.stage,
            "architecture": architecture, "output": str(Path(output))}
