"""Command-line flags of launch/pretrain.py, Megatron-LM style, mapped onto config keys."""

import argparse
from typing import Optional

# Megatron-style flag -> dotted config key.
FLAG_TO_KEY = {
    "train_iters": "train.train_iters",
    "micro_batch_size": "train.micro_batch_size",
    "global_batch_size": "train.global_batch_size",
    "seed": "train.seed",
    "eval_interval": "train.eval_interval",
    "eval_iters": "train.eval_iters",
    "exit_interval": "train.exit_interval",
    "log_interval": "logging.log_interval",
    "log_dir": "logging.log_dir",
    "seq_length": "data.seq_length",
    "data_path": "data.data_path",
    "split": "data.split",
    "tokenizer_model": "data.tokenizer_model",
    "tokenizer_type": "data.tokenizer_type",
    "lr": "optimizer.lr",
    "min_lr": "optimizer.min_lr",
    "clip_grad": "optimizer.clip_grad",
    "ep_size": "parallel.ep_size",
    "save": "checkpoint.save",
    "load": "checkpoint.load",
    "save_interval": "checkpoint.save_interval",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch/pretrain.py",
        description="Pretrain an ARIA-class MoE model; run with torchrun for several processes.",
    )
    parser.add_argument("--stage", type=int, required=True, help="curriculum stage 1-4")
    parser.add_argument("--config", default=None, help="YAML file (default: the stage's pipelines/ config)")
    parser.add_argument("--model", default=None,
                        help="a recipe of the stage (pipelines/stageN_*/NAME.yaml: aria-25b, aria-25b-finetune, ...) "
                             "or a model preset for the stage's config.yaml (tiny | aria-25b)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set model.moe.top_k=4 (repeatable)")
    parser.add_argument("--dry-run", action="store_true",
                        help="build on the meta device, print parameter and memory accounting, exit")
    parser.add_argument("--world-size", type=int, default=None,
                        help="with --dry-run: the number of GPUs to account for (default: the recipe's "
                             "parallel.min_world_size, else 8)")
    parser.add_argument("--mfu", type=float, default=None,
                        help="with --dry-run: the model-FLOPs utilisation the time estimate assumes (default 0.30)")
    parser.add_argument("--init-from-hf", default=None, metavar="DIR",
                        help="start from a transformers Aria checkpoint directory (config.json + safetensors + "
                             "tokenizer): its weights, model shapes and tokenizer; fresh optimizer, step 0")
    parser.add_argument("--no-load-optim", action="store_true",
                        help="with --load: take weights only (fresh optimizer, step 0)")
    parser.add_argument("--wandb", action="store_true", help="log to wandb (offline unless configured)")
    for flag in FLAG_TO_KEY:
        kwargs = {"nargs": "+"} if flag == "data_path" else {}
        parser.add_argument("--" + flag.replace("_", "-"), dest=flag, default=None, **kwargs)
    return parser


def overrides_from_args(args: argparse.Namespace) -> dict:
    """Dotted-key overrides from the flags; `--set` wins over the named flags."""
    overrides: dict = {}
    for flag, key in FLAG_TO_KEY.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    if args.no_load_optim:
        overrides["checkpoint.load_optim"] = False
    if args.init_from_hf:  # the directory's weights instead of the previous stage's, and its tokenizer
        overrides["checkpoint.init_from_hf"] = args.init_from_hf
        overrides["checkpoint.init_from"] = ""
        if "data.tokenizer_model" not in overrides:  # --tokenizer-model names another one
            overrides["data.tokenizer_model"] = args.init_from_hf
            overrides["data.tokenizer_type"] = "huggingface"
    if args.wandb:
        overrides["logging.wandb"] = True
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = _parse_scalar(value.strip())
    return overrides


def _parse_scalar(text: str):
    import yaml

    try:
        return yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        return text


def parse_args(argv: Optional[list] = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)
