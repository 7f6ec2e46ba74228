"""Conversion between aria-train's text decoder and transformers' `AriaTextForCausalLM`.

Weights map one to one by name: no tensor is transposed, split or rescaled, so a conversion in
either direction is bit-exact. Our layout already is Aria's (routed experts stored as
w_gate_up [E, H, 2I] with (gate, up) halves and w_down [E, I, H]).

    ours                                      transformers (in memory)
    embed_tokens.weight                       model.embed_tokens.weight
    layers.N.attention_norm.weight            model.layers.N.input_layernorm.weight
    layers.N.attention.{q,k,v,o}_proj.weight  model.layers.N.self_attn.{q,k,v,o}_proj.weight
    layers.N.moe_norm.weight                  model.layers.N.post_attention_layernorm.weight
    layers.N.moe.router.weight                model.layers.N.mlp.router.weight
    layers.N.moe.experts.w_gate_up            model.layers.N.mlp.experts.gate_up_proj
    layers.N.moe.experts.w_down               model.layers.N.mlp.experts.down_proj
    layers.N.moe.shared.{gate,up,down}_proj   model.layers.N.mlp.shared_experts.{gate,up,down}_proj
    norm.weight                               model.norm.weight
    lm_head.weight                            lm_head.weight

On disk (safetensors), transformers 5.x writes the routed experts under the names of the
original Aria checkpoints, `mlp.experts.fc1.weight` and `mlp.experts.fc2.weight` (same tensors,
same layout; see `conversion_mapping.py`, "aria_text"). `hf_to_aria_state_dict` accepts both
spellings; `aria_to_hf_state_dict(..., on_disk=True)` writes the on-disk one, which is what
`save_hf_checkpoint` stores and what `AriaTextForCausalLM.from_pretrained` reads.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Optional

import torch

from aria_train.model.config import ModelConfig
from aria_train.model.decoder import AriaForCausalLM

# (ours, transformers in-memory) suffixes inside one layer.
_LAYER_KEYS = [
    ("attention_norm.weight", "input_layernorm.weight"),
    ("attention.q_proj.weight", "self_attn.q_proj.weight"),
    ("attention.k_proj.weight", "self_attn.k_proj.weight"),
    ("attention.v_proj.weight", "self_attn.v_proj.weight"),
    ("attention.o_proj.weight", "self_attn.o_proj.weight"),
    ("moe_norm.weight", "post_attention_layernorm.weight"),
    ("moe.router.weight", "mlp.router.weight"),
    ("moe.experts.w_gate_up", "mlp.experts.gate_up_proj"),
    ("moe.experts.w_down", "mlp.experts.down_proj"),
    ("moe.shared.gate_proj.weight", "mlp.shared_experts.gate_proj.weight"),
    ("moe.shared.up_proj.weight", "mlp.shared_experts.up_proj.weight"),
    ("moe.shared.down_proj.weight", "mlp.shared_experts.down_proj.weight"),
]
_GLOBAL_KEYS = [
    ("embed_tokens.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
]
# transformers in-memory name -> name in safetensors files (legacy Aria checkpoint names).
_ON_DISK = {"mlp.experts.gate_up_proj": "mlp.experts.fc1.weight", "mlp.experts.down_proj": "mlp.experts.fc2.weight"}


def _key_map(num_layers: int, on_disk: bool = False) -> dict[str, str]:
    """ours -> transformers, for every weight of a `num_layers`-layer model."""
    mapping = dict(_GLOBAL_KEYS)
    for layer in range(num_layers):
        for ours, theirs in _LAYER_KEYS:
            if on_disk:
                theirs = _ON_DISK.get(theirs, theirs)
            mapping[f"layers.{layer}.{ours}"] = f"model.layers.{layer}.{theirs}"
    return mapping


def _rename(sd: dict, mapping: dict[str, str], aliases: dict[str, str], side: str) -> dict:
    out = {}
    for key, value in sd.items():
        target = mapping.get(key)
        if target is None:
            canonical = aliases.get(key)
            target = mapping.get(canonical) if canonical is not None else None
        if target is None:
            raise ValueError(f"unexpected {side} state-dict key {key!r}")
        if target in out:
            raise ValueError(f"{side} state-dict key {key!r} duplicates another spelling of the same weight")
        out[target] = value
    missing = [k for k in mapping.values() if k not in out]
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"{side} state dict lacks key {missing[0]!r}{more}")
    return out


def hf_to_aria_state_dict(hf_sd: dict, num_layers: int) -> dict:
    """transformers AriaTextForCausalLM state dict (in-memory or on-disk names) -> ours.

    Tensors are passed through untouched (same objects). Raises a one-line ValueError on an
    unknown or missing key.
    """
    in_memory, on_disk = _key_map(num_layers), _key_map(num_layers, on_disk=True)
    to_ours = {theirs: ours for ours, theirs in in_memory.items()}
    aliases = {on_disk[o]: in_memory[o] for o in in_memory if on_disk[o] != in_memory[o]}
    return _rename(hf_sd, to_ours, aliases, "transformers")


def aria_to_hf_state_dict(sd: dict, num_layers: int, on_disk: bool = False) -> dict:
    """Our state dict -> transformers AriaTextForCausalLM names (in-memory names by default;
    `on_disk=True` gives the names transformers writes to safetensors: experts.fc1/fc2.weight)."""
    return _rename(sd, _key_map(num_layers, on_disk), {}, "aria-train")


# --------------------------------------------------------------------------------------------
# Configs


def model_config_from_hf(hf_text_config, base: Optional[ModelConfig] = None) -> ModelConfig:
    """transformers AriaTextConfig (or its dict) -> ModelConfig.

    Fields transformers does not know (balance group size, loss coefficients, capacity,
    activation checkpointing) come from `base` (default: ModelConfig()); the balance group size
    is reduced to a divisor of the expert count if needed. `preset` names the preset with the
    same shapes if there is one, else stays base.preset (every field is set either way). Raises ValueError for features our
    decoder does not implement (grouped-query attention, biases, tied embeddings, other
    activations or RoPE scalings).
    """
    c = hf_text_config.to_dict() if hasattr(hf_text_config, "to_dict") else dict(hf_text_config)
    if c.get("model_type", "aria_text") != "aria_text":
        raise ValueError(f"config model_type={c.get('model_type')!r} is not 'aria_text' (pass the text_config)")
    base = base or ModelConfig()
    heads = int(c["num_attention_heads"])
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    unsupported = {
        "num_key_value_heads": (c.get("num_key_value_heads") or heads, heads),
        "attention_bias": (bool(c.get("attention_bias", False)), False),
        "mlp_bias": (bool(c.get("mlp_bias", False)), False),
        "tie_word_embeddings": (bool(c.get("tie_word_embeddings", False)), False),
        "hidden_act": (c.get("hidden_act", "silu"), "silu"),
    }
    for key, (value, expected) in unsupported.items():
        if value != expected:
            raise ValueError(f"transformers config {key}={value!r} is not supported (need {expected!r})")
    rope = c.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"transformers config rope_parameters.rope_type={rope.get('rope_type')!r} is not supported")
    rope_theta = rope.get("rope_theta", c.get("rope_theta"))
    if rope_theta is None:
        raise ValueError("transformers config has no rope_parameters.rope_theta")
    num_experts = int(c["moe_num_experts"])
    moe = dataclasses.replace(
        base.moe,
        num_experts=num_experts,
        top_k=int(c["moe_topk"]),
        num_shared_experts=int(c["moe_num_shared_experts"]),
        expert_ffn_size=int(c["intermediate_size"]),
        balance_group_size=math.gcd(base.moe.balance_group_size, num_experts),
    )
    cfg = dataclasses.replace(
        base,
        vocab_size=int(c["vocab_size"]),
        hidden_size=int(c["hidden_size"]),
        num_layers=int(c["num_hidden_layers"]),
        num_heads=heads,
        head_dim=int(head_dim),
        rms_norm_eps=float(c["rms_norm_eps"]),
        rope_base=float(rope_theta),
        init_std=float(c.get("initializer_range", base.init_std)),
        moe=moe,
    )
    return dataclasses.replace(cfg, preset=_matching_preset(cfg) or base.preset)


def _shape(cfg: ModelConfig) -> tuple:
    m = cfg.moe
    return (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.head_dim,
            m.num_experts, m.top_k, m.num_shared_experts, m.expert_ffn_size)


def _matching_preset(cfg: ModelConfig) -> Optional[str]:
    """The name of the preset with the same shapes, so a written config names what it is."""
    from aria_train.config.loader import from_dict
    from aria_train.config.presets import MODEL_PRESETS

    for name, fields in MODEL_PRESETS.items():
        if _shape(from_dict(ModelConfig, fields, prefix="model.")) == _shape(cfg):
            return name
    return None


def hf_text_config_from_model(cfg: ModelConfig, **overrides):
    """ModelConfig -> transformers.AriaTextConfig (untied, full multi-head attention, no biases).
    `overrides` are passed to AriaTextConfig (e.g. max_position_embeddings, bos/eos ids)."""
    from transformers import AriaTextConfig

    kwargs = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.moe.expert_ffn_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_base)},
        initializer_range=cfg.init_std,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        moe_num_experts=cfg.moe.num_experts,
        moe_topk=cfg.moe.top_k,
        moe_num_shared_experts=cfg.moe.num_shared_experts,
    )
    kwargs.update(overrides)
    config = AriaTextConfig(**kwargs)
    config.architectures = ["AriaTextForCausalLM"]
    return config


# --------------------------------------------------------------------------------------------
# Checkpoint directories


def _read_safetensors(directory: Path) -> dict:
    from safetensors.torch import load_file

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in directory.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no safetensors files in {directory}")
    sd = {}
    for name in files:
        sd.update(load_file(str(directory / name)))
    return sd


def load_hf_checkpoint(
    directory, base: Optional[ModelConfig] = None, dtype: Optional[torch.dtype] = torch.float32
) -> AriaForCausalLM:
    """A transformers AriaTextForCausalLM directory (config.json + *.safetensors) -> our model.

    The model is built on the meta device and takes the checkpoint tensors directly (no random
    init), cast to `dtype` (None keeps the checkpoint's dtype). `base` supplies the fields
    transformers does not have (see model_config_from_hf).
    """
    from transformers import AriaTextConfig

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise ValueError(f"{directory} has no config.json")
    cfg = model_config_from_hf(AriaTextConfig.from_json_file(str(directory / "config.json")), base)
    sd = hf_to_aria_state_dict(_read_safetensors(directory), cfg.num_layers)
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    with torch.device("meta"):
        model = AriaForCausalLM(cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    model.rope.to_empty(device=next(iter(sd.values())).device)
    model.rope.reset_parameters()
    return model


def save_hf_checkpoint(model: AriaForCausalLM, directory, **config_overrides) -> None:
    """Writes config.json + model.safetensors that `AriaTextForCausalLM.from_pretrained(directory)`
    loads. Tensors keep the model's dtype; expert tensors use the on-disk names (fc1/fc2)."""
    from safetensors.torch import save_file

    cfg = model.cfg
    for experts in model.expert_modules():
        if experts.num_local_experts != experts.num_experts:
            raise ValueError(
                f"model holds {experts.num_local_experts} of {experts.num_experts} experts per layer "
                "(expert-parallel shard); gather the experts before saving"
            )
    cfg = dataclasses.replace(cfg, rope_base=model.rope.base)  # what the model actually computes with
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sd = aria_to_hf_state_dict(model.state_dict(), cfg.num_layers, on_disk=True)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    dtype = next(iter(sd.values())).dtype
    config = hf_text_config_from_model(cfg, **config_overrides)
    config.dtype = str(dtype).removeprefix("torch.")
    config.to_json_file(str(directory / "config.json"))
    save_file(sd, str(directory / "model.safetensors"), metadata={"format": "pt"})


__all__ = [
    "aria_to_hf_state_dict",
    "hf_text_config_from_model",
    "hf_to_aria_state_dict",
    "load_hf_checkpoint",
    "model_config_from_hf",
    "save_hf_checkpoint",
]
