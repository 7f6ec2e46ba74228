"""A stage's length as papers state it: a token budget and tokens per step.

    global_batch_size = train.global_batch_tokens / data.seq_length      (must divide)
    train_iters       = ceil(train.token_budget / (global_batch_size x data.seq_length))

so the tokens trained, train_iters x global_batch_size x seq_length, cover the budget and exceed
it by less than one step. A value given explicitly (`--train-iters`, `--global-batch-size` or
`--set`) wins over the derived one: the budget it replaces is dropped from the config, with a note
on stderr, so a short trial of a recipe (`--train-iters 20`) decays its schedule over what it runs.
(`train.exit_interval` instead stops a run early on the full run's schedule.)
"""

from __future__ import annotations

import math
import sys

from aria_train.config import ConfigError


def apply_token_budget(cfg, raw: dict, overrides: dict) -> None:
    """Fills cfg.train.global_batch_size and train_iters from the token fields, in place.

    `raw` is the stage YAML and `overrides` the command line, to tell a value given explicitly
    from a default; a YAML that gives both a token field and the size it determines is an error."""
    train, seq = cfg.train, cfg.data.seq_length
    yaml_train = raw.get("train", {}) or {}
    pairs = (("global_batch_tokens", "global_batch_size"), ("token_budget", "train_iters"))
    for tokens_key, size_key in pairs:
        value = getattr(train, tokens_key)
        if value is not None and value <= 0:
            raise ConfigError(f"train.{tokens_key}={value} must be positive or null")
        if yaml_train.get(tokens_key) is not None and size_key in yaml_train:
            raise ConfigError(f"train.{tokens_key} and train.{size_key} are both set in the config file; "
                              f"give one (the second follows from the first)")
        if getattr(train, tokens_key) is not None and f"train.{size_key}" in overrides:
            print(f"note: train.{size_key}={getattr(train, size_key)} given; "
                  f"train.{tokens_key}={getattr(train, tokens_key):,} is not used", file=sys.stderr)
            setattr(train, tokens_key, None)
    if train.global_batch_tokens is not None:
        if train.global_batch_tokens % seq:
            raise ConfigError(f"train.global_batch_tokens={train.global_batch_tokens:,} is not a multiple of "
                              f"data.seq_length={seq:,}")
        train.global_batch_size = train.global_batch_tokens // seq
    if train.token_budget is not None:
        train.train_iters = math.ceil(train.token_budget / (train.global_batch_size * seq))


def tokens_per_step(cfg) -> int:
    return cfg.train.global_batch_size * cfg.data.seq_length


def describe_budget(cfg) -> str:
    """One line: iterations x global batch x sequence = tokens, against the budget if any."""
    step = tokens_per_step(cfg)
    total = cfg.train.train_iters * step
    line = (f"{cfg.train.train_iters:,} iterations x {cfg.train.global_batch_size:,} sequences x "
            f"{cfg.data.seq_length:,} tokens = {total:,} tokens ({step:,} per step)")
    if cfg.train.token_budget is not None:
        line += f"; train.token_budget {cfg.train.token_budget:,}"
    else:
        line += "; no train.token_budget (train_iters given)"
    return line
