"""What stage 0 trains on (`encoder.datasets`, `encoder.pairs`): named datasets, and the
(dataset, objective) pairs the alternating schedule chooses from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence

from aria_train.config import ConfigError


@dataclass
class EncoderDatasetConfig:
    name: str = ""
    # Shard folder, glob or file (as data.mm_data_path's entries); "" = the synthetic
    # shapes-and-colours demo of this kind, generated offline under data.cache_dir.
    path: str = ""
    kind: Literal["labelled", "image_text"] = "labelled"
    # labelled: a text file of class names, line i = class i ("" = classes.txt in the shard folder)
    class_names: str = ""
    image_size: int = 0  # long side of the resized image (px); 0 = the projector's smallest crop (stage 2's medium)
    eval_samples: int = 0  # held out (never trained on) for zero-shot / retrieval evaluation
    synthetic_samples: int = 3000  # size of the generated demo (path "")


@dataclass
class PairConfig:
    dataset: str = ""
    objective: Literal["nce", "softmax"] = "nce"
    weight: float = 1.0
    batch_size: int = 32  # global batch of the pair (all ranks); a multiple of the world size


def validate_pairs(datasets: Sequence[EncoderDatasetConfig], pairs: Sequence[PairConfig],
                   world_size: Optional[int] = None) -> None:
    """Names unique and known, objectives that fit their data, positive weights and batches that
    split evenly over the ranks; ConfigError naming the entry."""
    names = [d.name for d in datasets]
    for i, d in enumerate(datasets):
        if not d.name:
            raise ConfigError(f"encoder.datasets[{i}] has no name")
        if names.count(d.name) > 1:
            raise ConfigError(f"encoder.datasets: the name {d.name!r} is used twice")
        if d.image_size < 0 or d.eval_samples < 0 or d.synthetic_samples <= 0:
            raise ConfigError(f"encoder.datasets[{i}] ({d.name}): image_size and eval_samples must be >= 0, "
                              f"synthetic_samples > 0")
    if not pairs:
        raise ConfigError("encoder.pairs is empty: stage 0 needs at least one (dataset, objective) pair")
    seen = set()
    for i, pair in enumerate(pairs):
        where = f"encoder.pairs[{i}] ({pair.dataset}, {pair.objective})"
        if pair_name(pair) in seen:
            raise ConfigError(f"{where}: the same dataset and objective twice (give it one pair and its weight)")
        seen.add(pair_name(pair))
        if pair.dataset not in names:
            raise ConfigError(f"{where}: no dataset named {pair.dataset!r} in encoder.datasets ({', '.join(names)})")
        kind = datasets[names.index(pair.dataset)].kind
        if pair.objective == "softmax" and kind != "labelled":
            raise ConfigError(f"{where}: softmax classification needs a labelled dataset, {pair.dataset} is {kind}")
        if not pair.weight > 0:
            raise ConfigError(f"{where}: weight={pair.weight} must be positive")
        if pair.batch_size <= 0:
            raise ConfigError(f"{where}: batch_size={pair.batch_size} must be positive")
        if world_size is not None and pair.batch_size % world_size:
            raise ConfigError(f"{where}: batch_size={pair.batch_size} is not a multiple of the world size "
                              f"{world_size} (each rank takes an equal share of the global batch)")


def pair_name(pair: PairConfig) -> str:
    """How logs name a pair: `dataset/objective`."""
    return f"{pair.dataset}/{pair.objective}"
