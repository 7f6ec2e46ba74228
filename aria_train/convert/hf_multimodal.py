"""Conversion between aria-train's multimodal model and transformers' AriaForConditionalGeneration,
and initialisation of the ViT from a SigLIP / Idefics3 vision checkpoint.

Every tensor maps one to one by name (no transpose, split or rescale), so conversions are
bit-exact in both directions.

    ours                          transformers in memory              on disk (safetensors)
    vision_tower.X                model.vision_tower.X                vision_tower.X
    multi_modal_projector.X       model.multi_modal_projector.X       multi_modal_projector.X
    language_model.<ours>         model.language_model.<hf_text>      language_model.model.<hf_text>
    language_model.lm_head.weight lm_head.weight                      language_model.lm_head.weight

<ours>/<hf_text> is the decoder mapping of aria_train.convert.hf_text (routed experts are
`mlp.experts.gate_up_proj/down_proj` in memory, `mlp.experts.fc1/fc2.weight` on disk). The
original Aria checkpoints' `vision_tower.vision_model.X` is accepted as well.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Optional

import torch

from aria_train.model.config import ModelConfig
from aria_train.model.vision_config import ProjectorConfig, VisionConfig
from aria_train.convert import hf_text
from aria_train.model.multimodal import AriaForConditionalGeneration
from aria_train.model.vision import VisionTransformer

_TOWERS = ("vision_tower.", "multi_modal_projector.")


def _to_in_memory(key: str) -> str:
    """Any accepted transformers spelling -> transformers' in-memory name."""
    if key == "language_model.lm_head.weight":
        return "lm_head.weight"
    if key.startswith("language_model.model."):
        return "model.language_model." + key[len("language_model.model.") :]
    if key.startswith("vision_tower.vision_model."):
        return "model.vision_tower." + key[len("vision_tower.vision_model.") :]
    if key.startswith(_TOWERS):
        return "model." + key
    return key


def hf_to_aria_state_dict(hf_sd: dict, num_layers: int) -> dict:
    """transformers AriaForConditionalGeneration state dict (in-memory or on-disk names) -> ours.

    Tensors pass through untouched. Raises a one-line ValueError on an unknown or missing decoder
    key or an unknown prefix; vision/projector keys are checked by load_state_dict(strict=True).
    """
    text, out = {}, {}
    for key, value in hf_sd.items():
        name = _to_in_memory(key)
        if name.startswith("model.language_model."):
            text["model." + name[len("model.language_model.") :]] = value
        elif name == "lm_head.weight":
            text[name] = value
        elif name.startswith(tuple("model." + t for t in _TOWERS)):
            ours = name[len("model.") :]
            if ours in out:
                raise ValueError(f"transformers state-dict key {key!r} duplicates another spelling of the same weight")
            out[ours] = value
        else:
            raise ValueError(f"unexpected transformers state-dict key {key!r}")
    for key, value in hf_text.hf_to_aria_state_dict(text, num_layers).items():
        out["language_model." + key] = value
    return out


def aria_to_hf_state_dict(sd: dict, num_layers: int, on_disk: bool = False) -> dict:
    """Our state dict -> transformers AriaForConditionalGeneration names (in-memory names by
    default; `on_disk=True` gives the names transformers writes to safetensors)."""
    text, out = {}, {}
    for key, value in sd.items():
        if key.startswith("language_model."):
            text[key[len("language_model.") :]] = value
        elif key.startswith(_TOWERS):
            out[key if on_disk else "model." + key] = value
        else:
            raise ValueError(f"unexpected aria-train state-dict key {key!r}")
    for key, value in hf_text.aria_to_hf_state_dict(text, num_layers, on_disk=on_disk).items():
        if key == "lm_head.weight":
            out["language_model.lm_head.weight" if on_disk else key] = value
        else:  # model.X
            rest = key[len("model.") :]
            out[("language_model.model." if on_disk else "model.language_model.") + rest] = value
    return out


# --------------------------------------------------------------------------------------------
# Configs


def vision_config_from_hf(hf_vision_config, base: Optional[VisionConfig] = None) -> VisionConfig:
    """Idefics3VisionConfig / SiglipVisionConfig (or their dicts) -> VisionConfig."""
    c = hf_vision_config.to_dict() if hasattr(hf_vision_config, "to_dict") else dict(hf_vision_config)
    act = c.get("hidden_act", "gelu_pytorch_tanh")
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise ValueError(f"vision config hidden_act={act!r} is not supported (need 'gelu_pytorch_tanh')")
    base = base or VisionConfig()
    return dataclasses.replace(
        base,
        preset="hf",
        hidden_size=int(c["hidden_size"]),
        num_layers=int(c["num_hidden_layers"]),
        num_heads=int(c["num_attention_heads"]),
        intermediate_size=int(c["intermediate_size"]),
        patch_size=int(c["patch_size"]),
        image_size=int(c["image_size"]),
        num_channels=int(c.get("num_channels", 3)),
        layer_norm_eps=float(c.get("layer_norm_eps", 1e-6)),
        init_std=c.get("initializer_range", base.init_std),
    ).validate()


def configs_from_hf(hf_config, base: Optional[ModelConfig] = None):
    """transformers AriaConfig -> (ModelConfig, VisionConfig, ProjectorConfig, image_token_id)."""
    text = hf_text.model_config_from_hf(hf_config.text_config, base)
    vision = vision_config_from_hf(hf_config.vision_config)
    if getattr(hf_config, "vision_feature_layer", -1) != -1:
        raise ValueError(f"vision_feature_layer={hf_config.vision_feature_layer} is not supported (need -1)")
    if getattr(hf_config, "tie_word_embeddings", False):
        raise ValueError("tie_word_embeddings=True is not supported")
    projector = ProjectorConfig(patch_to_query=dict(hf_config.projector_patch_to_query_dict)).validate(vision)
    return text, vision, projector, int(hf_config.image_token_index)


def hf_config_from_model(model: AriaForConditionalGeneration, **text_overrides):
    """Our model's configs -> transformers AriaConfig."""
    from transformers import AriaConfig

    v = model.vision_cfg
    if model.projector_cfg.num_heads not in (None, v.num_heads):
        raise ValueError("transformers' AriaProjector uses the vision head count; projector.num_heads differs")
    config = AriaConfig(
        vision_config=dict(
            model_type="idefics3_vision",
            hidden_size=v.hidden_size,
            intermediate_size=v.intermediate_size,
            num_hidden_layers=v.num_layers,
            num_attention_heads=v.num_heads,
            num_channels=v.num_channels,
            image_size=v.image_size,
            patch_size=v.patch_size,
            hidden_act="gelu_pytorch_tanh",
            layer_norm_eps=v.layer_norm_eps,
            initializer_range=v.init_std if v.init_std is not None else 0.02,  # HF needs a number
        ),
        text_config=hf_text.hf_text_config_from_model(model.cfg, **text_overrides).to_dict(),
        projector_patch_to_query_dict=dict(model.projector_cfg.patch_to_query),
        image_token_index=model.image_token_id,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    config.architectures = ["AriaForConditionalGeneration"]
    return config


# --------------------------------------------------------------------------------------------
# Checkpoint directories


def load_hf_checkpoint(
    directory, base: Optional[ModelConfig] = None, dtype: Optional[torch.dtype] = torch.float32
) -> AriaForConditionalGeneration:
    """A transformers AriaForConditionalGeneration directory (config.json + *.safetensors) -> our
    model, built on the meta device and given the checkpoint tensors (cast to `dtype`)."""
    from transformers import AriaConfig

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise ValueError(f"{directory} has no config.json")
    text, vision, projector, image_token_id = configs_from_hf(AriaConfig.from_json_file(str(directory / "config.json")), base)
    sd = hf_to_aria_state_dict(hf_text._read_safetensors(directory), text.num_layers)
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    with torch.device("meta"):
        model = AriaForConditionalGeneration(text, vision, projector, image_token_id)
    model.load_state_dict(sd, strict=True, assign=True)
    rope = model.language_model.rope
    rope.to_empty(device=next(iter(sd.values())).device)
    rope.reset_parameters()
    return model


def save_hf_checkpoint(model: AriaForConditionalGeneration, directory, **text_overrides) -> None:
    """Writes config.json + model.safetensors that
    `transformers.AriaForConditionalGeneration.from_pretrained(directory)` loads."""
    from safetensors.torch import save_file

    for experts in model.expert_modules():
        if experts.num_local_experts != experts.num_experts:
            raise ValueError("model holds an expert-parallel shard of the experts; gather them before saving")
    options = imp_options_on(model)
    if options:
        raise ValueError(f"transformers' Aria has no {', '.join(options)}: only models with IMP's options off export")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sd = aria_to_hf_state_dict(model.state_dict(), model.cfg.num_layers, on_disk=True)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    config = hf_config_from_model(model, **text_overrides)
    config.text_config.rope_parameters = {"rope_type": "default", "rope_theta": float(model.language_model.rope.base)}
    config.dtype = str(next(iter(sd.values())).dtype).removeprefix("torch.")
    config.to_json_file(str(directory / "config.json"))
    save_file(sd, str(directory / "model.safetensors"), metadata={"format": "pt"})


def imp_options_on(model: AriaForConditionalGeneration) -> list[str]:
    """The IMP options (off by default) a model uses; transformers' Aria has none of them."""
    text, vision, audio = model.cfg, model.vision_cfg, model.audio_cfg
    found = [name for name, on in (
        ("model.qk_norm", text.qk_norm != "none"),
        ("model.moe.layer_freq / first_k_dense", len(text.moe_layers) != text.num_layers),
        ("vision.qk_norm", vision.qk_norm != "none"),
        ("vision.moe", vision.moe.enabled),
        ("vision.patch=tubelet", vision.patch != "2d"),
        ("vision.position_embedding=factorized", vision.position_embedding != "bucketed"),
        ("audio", audio is not None and audio.enabled),
    ) if on]
    return found


# --------------------------------------------------------------------------------------------
# SigLIP / Idefics3 vision checkpoints

_ANCHOR = "embeddings.patch_embedding.weight"


def _vision_config_json(path: Path) -> Optional[dict]:
    config = (path if path.is_dir() else path.parent) / "config.json"
    if not config.is_file():
        return None
    c = json.loads(config.read_text())
    if "vision_config" in c and c.get("model_type") not in ("siglip_vision_model", "idefics3_vision"):
        c = c["vision_config"]
    return c


def load_siglip_vision(
    path, cfg: Optional[VisionConfig] = None, interpolate_positions: bool = False, dtype=torch.float32
) -> VisionTransformer:
    """Builds our ViT from a SigLIP or Idefics3 vision checkpoint in safetensors.

    `path`: a .safetensors file or a directory of them (sharded with an index is fine). The vision
    weights are found by the prefix in front of `embeddings.patch_embedding.weight` (e.g.
    `vision_model.` in SiglipModel / SiglipVisionModel, `model.vision_model.` in Idefics3, none in
    a bare Idefics3VisionTransformer); anything else in the file (text tower, SigLIP's pooling
    head, logit scale) is ignored. `cfg`: our VisionConfig; if None it is read from config.json
    next to the weights (a vision config, or the `vision_config` of a full model).

    A checkpoint whose position grid differs from cfg's (SigLIP-SO400M-384 has 27x27 positions,
    ARIA 70x70) loads only with `interpolate_positions=True`: the grid is resized bicubically.
    """
    path = Path(path)
    if cfg is None:
        c = _vision_config_json(path)
        if c is None:
            raise ValueError(f"no config.json next to {path}; pass cfg=VisionConfig(...)")
        cfg = vision_config_from_hf(c)
    if path.is_dir():
        raw = hf_text._read_safetensors(path)
    else:
        from safetensors.torch import load_file

        raw = load_file(str(path))
    anchors = [k for k in raw if k.endswith(_ANCHOR)]
    if len(anchors) != 1:
        raise ValueError(f"{path}: expected one '{_ANCHOR}' tensor, found {len(anchors)}")
    prefix = anchors[0][: -len(_ANCHOR)]
    with torch.device("meta"):
        model = VisionTransformer(cfg)
    wanted = set(model.state_dict())
    sd = {k[len(prefix) :]: v.to(dtype) for k, v in raw.items() if k.startswith(prefix) and k[len(prefix) :] in wanted}
    missing = sorted(wanted - set(sd))
    if missing:
        raise ValueError(f"{path}: vision checkpoint lacks {missing[0]!r}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
    key = "embeddings.position_embedding.weight"
    have, want = sd[key].shape[0], cfg.num_patches_per_side**2
    if have != want:
        if not interpolate_positions:
            raise ValueError(
                f"{path}: checkpoint has {have} positions, the config {want} "
                f"({cfg.num_patches_per_side}x{cfg.num_patches_per_side}); pass interpolate_positions=True"
            )
        sd[key] = _resize_positions(sd[key], cfg.num_patches_per_side)
    model.load_state_dict(sd, strict=True, assign=True)
    return model


def _resize_positions(table: torch.Tensor, side: int) -> torch.Tensor:
    old = math.isqrt(table.shape[0])
    if old * old != table.shape[0]:
        raise ValueError(f"position table of {table.shape[0]} rows is not a square grid")
    grid = table.float().reshape(old, old, -1).permute(2, 0, 1).unsqueeze(0)
    grid = torch.nn.functional.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
    return grid.squeeze(0).permute(1, 2, 0).reshape(side * side, -1).to(table.dtype)


__all__ = [
    "aria_to_hf_state_dict",
    "configs_from_hf",
    "hf_config_from_model",
    "hf_to_aria_state_dict",
    "load_hf_checkpoint",
    "load_siglip_vision",
    "save_hf_checkpoint",
    "vision_config_from_hf",
]


def init_vision_tower(model, path) -> str:
    """Starts `model.vision_tower` from `vision.init_from`: a SigLIP / Idefics3 vision checkpoint
    (safetensors), or an aria-train run or checkpoint directory holding a ViT (stage 0's
    encoder pretraining, or a multimodal stage). A position grid of another size is resized to the
    model's. Returns what was loaded, for the log."""
    from aria_train.checkpoint.module_weights import holds_training_checkpoint
    from aria_train.errors import UserError

    if holds_training_checkpoint(path):
        return _init_from_training_checkpoint(model, path)
    try:
        loaded = load_siglip_vision(path, model.vision_cfg, interpolate_positions=True)
        model.vision_tower.load_state_dict(loaded.state_dict())
    except (ValueError, RuntimeError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"vision.init_from={path}: {first_line}") from None
    return f"SigLIP/Idefics3 vision checkpoint {path}"


_POSITIONS = "embeddings.position_embedding.weight"


def _init_from_training_checkpoint(model, path) -> str:
    from aria_train.checkpoint.module_weights import read_module
    from aria_train.errors import UserError

    tower = model.vision_tower.state_dict()
    saved = read_module(path, "vision_tower.", list(tower))
    for name, tensor in saved.tensors.items():
        if name == _POSITIONS and tensor.shape != tower[name].shape and tensor.shape[1:] == tower[name].shape[1:]:
            tensor = _resize_positions(tensor, model.vision_cfg.num_patches_per_side)
        if tensor.shape != tower[name].shape:
            raise UserError(f"vision.init_from={path}: {name} has shape {list(tensor.shape)} there, "
                            f"{list(tower[name].shape)} here (the vision config must match the run that trained it)")
        with torch.no_grad():
            tower[name].copy_(tensor)
    meta = saved.metadata
    kind = "stage-0 encoder" if meta.get("stage") == 0 else f"stage-{meta.get('stage')}"
    return f"{kind} checkpoint {saved.path} (iteration {meta.get('iteration')})"
