#!/usr/bin/env python
"""Convert aria-train models to / from transformers directories.

    # a training checkpoint (any world / ep size) -> transformers, with the tokenizer
    python tools/convert_hf.py --to-hf --checkpoint runs/my-run --output hf/my-run
    python tools/convert_hf.py --to-hf --checkpoint runs/my-run/checkpoints/iter_0000200 --output hf/my-run

--checkpoint takes a run directory (its latest checkpoint), a save directory or one iter_N
directory, reads the distributed checkpoint in one process on CPU and writes config.json,
model.safetensors, tokenizer.json and tokenizer_config.json: AriaTextForCausalLM for stage 1
(AutoModelForCausalLM.from_pretrained loads it), AriaForConditionalGeneration for stages 2-4.

A plain text decoder state dict is two files: a plain torch state dict (`torch.save(model.state_dict(), "model.pt")`;
a dict holding it under "model" is accepted too) and the model config as YAML or JSON, either
the `model:` section's fields at the top level or a whole run config with a `model:` key.
The transformers side is a directory with config.json + model.safetensors (what
`save_pretrained` writes and `from_pretrained` reads, offline).

    # ours (state dict) -> transformers, text decoder only, no tokenizer
    python tools/convert_hf.py --to-hf --state-dict model.pt --config model.yaml --out hf_dir
    python tools/convert_hf.py --to-hf --state-dict model.pt --preset tiny --out hf_dir
    # transformers -> ours (writes model.pt and model.yaml; the YAML loads back with --config)
    python tools/convert_hf.py --from-hf hf_dir --out model.pt [--config-out model.yaml]

Weights are renamed only (bit-exact); --dtype bf16 casts on the way out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aria_train.config.loader import from_dict, to_dict  # noqa: E402
from aria_train.config.presets import MODEL_PRESETS  # noqa: E402
from aria_train.model.config import ModelConfig  # noqa: E402
from aria_train.convert.hf_text import load_hf_checkpoint, save_hf_checkpoint  # noqa: E402
from aria_train.errors import UserError  # noqa: E402
from aria_train.model.decoder import AriaForCausalLM  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def read_model_config(path: str | None, preset: str | None) -> ModelConfig:
    if preset:
        if preset not in MODEL_PRESETS:
            raise SystemExit(f"--preset {preset!r} is not one of {', '.join(MODEL_PRESETS)}")
        return from_dict(ModelConfig, {**MODEL_PRESETS[preset], "preset": preset}, prefix="model.")
    text = Path(path).read_text()
    data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    return from_dict(ModelConfig, data, prefix="model.")


def to_hf(args) -> None:
    if not (args.config or args.preset):
        raise SystemExit("--to-hf needs --config or --preset")
    cfg = read_model_config(args.config, args.preset)
    sd = torch.load(args.state_dict, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and isinstance(sd.get("model"), dict):
        sd = sd["model"]
    with torch.device("meta"):
        model = AriaForCausalLM(cfg)
    if args.dtype:
        sd = {k: v.to(DTYPES[args.dtype]) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    save_hf_checkpoint(model, args.out)
    print(f"wrote {args.out}/config.json and {args.out}/model.safetensors")


def checkpoint_to_hf(args) -> None:
    from aria_train.eval.hf_export import export_checkpoint

    done = export_checkpoint(args.checkpoint, args.out, DTYPES[args.dtype] if args.dtype else None)
    print(f"wrote {done['output']}: {done['architecture']} from {done['checkpoint']} (stage {done['stage']}, "
          f"iteration {done['iteration']}) with config.json, model.safetensors, tokenizer.json")


def from_hf(args) -> None:
    model = load_hf_checkpoint(args.from_hf, dtype=DTYPES[args.dtype] if args.dtype else None)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    config_out = Path(args.config_out) if args.config_out else out.with_suffix(".yaml")
    config_out.write_text(yaml.safe_dump({"model": to_dict(model.cfg)}, sort_keys=False))
    print(f"wrote {out} and {config_out}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--to-hf", action="store_true",
                           help="ours (checkpoint, or .pt + config) -> transformers directory")
    direction.add_argument("--from-hf", metavar="HF_DIR", help="transformers directory -> ours (.pt + YAML)")
    parser.add_argument("--checkpoint", help="--to-hf: a run directory, save directory or iter_N directory")
    parser.add_argument("--state-dict", help="--to-hf: our torch state dict (.pt)")
    parser.add_argument("--config", help="--to-hf: our model config (YAML or JSON)")
    parser.add_argument("--preset", help="--to-hf: a model preset instead of --config")
    parser.add_argument("--out", "--output", dest="out", required=True,
                        help="--to-hf: output directory; --from-hf: output .pt file")
    parser.add_argument("--config-out", help="--from-hf: where to write our config YAML (default: OUT with .yaml)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="cast weights (default: keep)")
    args = parser.parse_args(argv)
    try:
        if args.to_hf and args.checkpoint:
            checkpoint_to_hf(args)
        elif args.to_hf:
            if not args.state_dict:
                parser.error("--to-hf needs --checkpoint or --state-dict")
            to_hf(args)
        else:
            from_hf(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
