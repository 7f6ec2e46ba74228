"""Starting any stage from a transformers Aria checkpoint directory (`--init-from-hf DIR`,
`checkpoint.init_from_hf`): what save_pretrained writes -- config.json + safetensors (one file or
sharded with model.safetensors.index.json) -- for AriaForConditionalGeneration or
AriaTextForCausalLM, read offline.

  * Shapes: the decoder's, the ViT's and the projector's sizes come from config.json
    (`with_hf_shapes`); everything a stage chooses -- RoPE base, recompute modes, losses -- stays
    the stage's. A text-only checkpoint gives the decoder; a multimodal stage then builds its
    ViT and projector from its own config (random, or vision.init_from).
  * Weights (`load_hf_weights`): names map one to one (aria_train.convert.hf_text /
    hf_multimodal); each rank reads, tensor by tensor, only what it holds: under expert
    parallelism the rows of its own experts (safetensors slices), so no rank ever holds the whole
    checkpoint. A stage-1 (text) model takes the language model of a multimodal checkpoint.
  * Tokenizer: the directory's own (launch sets data.tokenizer_type=huggingface and
    data.tokenizer_model=DIR); its `<|img|>` must be the checkpoint's image_token_index.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from aria_train.convert import hf_multimodal, hf_text
from aria_train.errors import UserError
from aria_train.moe.experts import expert_parameter_layouts

_TEXT = "language_model."


def _fail(directory, error) -> UserError:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return UserError(f"--init-from-hf {directory}: {text}")


def read_hf_config(directory):
    """(AriaConfig or AriaTextConfig, multimodal?) from DIR/config.json."""
    from transformers import AriaConfig, AriaTextConfig

    path = Path(directory) / "config.json"
    if not path.is_file():
        raise UserError(f"--init-from-hf {directory}: no config.json (a transformers checkpoint directory is needed)")
    model_type = json.loads(path.read_text()).get("model_type")
    if model_type == "aria":
        return AriaConfig.from_json_file(str(path)), True
    if model_type == "aria_text":
        return AriaTextConfig.from_json_file(str(path)), False
    raise UserError(f"--init-from-hf {directory}: config.json has model_type={model_type!r}, not 'aria' or 'aria_text'")


def with_hf_shapes(cfg, directory):
    """`cfg` (a RunConfig) with the checkpoint's model shapes; the stage's RoPE base, recompute
    modes, loss coefficients and everything else kept. Not validated here (the caller does)."""
    hf, multimodal = read_hf_config(directory)
    try:
        text = hf_text.model_config_from_hf(hf.text_config if multimodal else hf, base=cfg.model)
        model = dataclasses.replace(text, rope_base=cfg.model.rope_base)
        if not (multimodal and cfg.multimodal):
            return dataclasses.replace(cfg, model=model)
        vision = hf_multimodal.vision_config_from_hf(hf.vision_config, base=cfg.vision)
        projector = dataclasses.replace(cfg.projector, patch_to_query=dict(hf.projector_patch_to_query_dict))
    except (ValueError, KeyError) as error:
        raise _fail(directory, error) from None
    return dataclasses.replace(cfg, model=model, vision=vision, projector=projector)


def _tensor_files(directory: Path) -> dict[str, Path]:
    """checkpoint key -> the safetensors file holding it."""
    from safetensors import safe_open

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        return {k: directory / f for k, f in json.loads(index.read_text())["weight_map"].items()}
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise UserError(f"--init-from-hf {directory}: no safetensors files")
    where = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            where.update({key: path for key in f.keys()})
    return where


def _our_names(keys: list[str], multimodal_checkpoint: bool, model: nn.Module) -> dict[str, str]:
    """our parameter name -> checkpoint key, for every parameter the checkpoint has."""
    multimodal_model = hasattr(model, "language_model")
    num_layers = (model.language_model if multimodal_model else model).cfg.num_layers
    by_key = {k: k for k in keys}  # the mappings rename and pass values through: names map to names
    if multimodal_checkpoint:
        ours = hf_multimodal.hf_to_aria_state_dict(by_key, num_layers)
        if not multimodal_model:  # stage 1 takes the language model only
            ours = {n[len(_TEXT):]: k for n, k in ours.items() if n.startswith(_TEXT)}
    else:
        ours = hf_text.hf_to_aria_state_dict(by_key, num_layers)
        if multimodal_model:
            ours = {_TEXT + n: k for n, k in ours.items()}
    return ours


@torch.no_grad()
def load_hf_weights(model: nn.Module, directory) -> str:
    """Copies the checkpoint's tensors into `model` (materialised, expert parallelism applied);
    returns a one-line summary. UserError for a missing, unexpected or misshapen tensor."""
    from safetensors import safe_open

    directory = Path(directory)
    hf, multimodal_checkpoint = read_hf_config(directory)
    image_token = getattr(model, "image_token_id", None)
    if multimodal_checkpoint and image_token is not None and int(hf.image_token_index) != image_token:
        raise UserError(f"--init-from-hf {directory}: the checkpoint's image_token_index {hf.image_token_index} is "
                        f"not the tokenizer's <|img|> id {image_token}")
    files = _tensor_files(directory)
    try:
        names = _our_names(list(files), multimodal_checkpoint, model)
    except ValueError as error:
        raise _fail(directory, error) from None
    experts = expert_parameter_layouts(model)
    params = dict(model.named_parameters())
    with contextlib.ExitStack() as stack:
        handles = {path: stack.enter_context(safe_open(str(path), framework="pt")) for path in set(files.values())}
        for name, key in names.items():
            if name not in params:
                raise UserError(f"--init-from-hf {directory}: checkpoint tensor {key} has no parameter {name} here")
            tensor = handles[files[key]].get_slice(key)
            # only this rank's experts: a slice reads just those rows from the file
            tensor = tensor[experts[name].first : experts[name].end] if name in experts else tensor[:]
            param = params[name]
            if tuple(tensor.shape) != tuple(param.shape):
                raise UserError(f"--init-from-hf {directory}: {key} has shape {tuple(tensor.shape)}, "
                                f"the model's {name} {tuple(param.shape)}")
            param.copy_(tensor.to(param.dtype))
    missing = [n for n in params if n not in names]
    if missing and multimodal_checkpoint == hasattr(model, "language_model"):
        raise UserError(f"--init-from-hf {directory}: the checkpoint lacks {missing[0]}"
                        + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
    kept = f"; {len(missing)} not in it keep their initialisation (e.g. {missing[0]})" if missing else ""
    return f"{len(names)} tensors loaded{kept}{_rope_note(hf, multimodal_checkpoint, model)}"


def _rope_note(hf, multimodal_checkpoint: bool, model: nn.Module) -> str:
    text = hf.text_config if multimodal_checkpoint else hf
    theirs = (getattr(text, "rope_parameters", None) or {}).get("rope_theta", getattr(text, "rope_theta", None))
    ours = (model.language_model if hasattr(model, "language_model") else model).rope.base
    if theirs is None or float(theirs) == float(ours):
        return ""
    return f"; RoPE base {float(ours):,.0f} (the stage's), the checkpoint was trained at {float(theirs):,.0f}"
