"""Stage 0's data from its config: the datasets (their units indexed on first use, the synthetic
demo generated when a dataset has no path), the prompts, the schedule and the pair streams."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from aria_train.data.encoder.batches import PairBatches, PairSpec
from aria_train.data.encoder.config import EncoderDatasetConfig, PairConfig, pair_name
from aria_train.data.encoder.dataset import EncoderDataset, ImageReader, read_class_names
from aria_train.data.encoder.prompts import PromptRenderer
from aria_train.data.encoder.schedule import PairSchedule
from aria_train.data.encoder.shards import CLASSES_FILE, write_synthetic_captions, write_synthetic_labelled
from aria_train.data.encoder.units import ensure_units, load_unit
from aria_train.data.errors import DataError
from aria_train.data.multimodal.sources import list_shards


@dataclass
class ImageSettings:
    default_size: int  # px, long side, when a dataset's image_size is 0
    min_size: int  # px, smallest short side
    patch_size: int


@dataclass
class EncoderData:
    train: PairBatches
    datasets: dict  # name -> EncoderDataset
    readers: dict  # name -> ImageReader
    prompts: PromptRenderer
    tokenizer: object
    classified: list  # the datasets a softmax pair trains (one classifier head each)

    @property
    def class_counts(self) -> dict:
        """Dataset name -> number of classes, for each classifier head."""
        return {n: len(self.datasets[n].class_names) for n in self.classified}


def synthetic_dir(cache_dir: str, d: EncoderDatasetConfig) -> Path:
    return Path(cache_dir) / f"encoder_{d.kind}_{d.synthetic_samples}"


def _ensure_synthetic(directory: Path, d: EncoderDatasetConfig, size: int, rank: int,
                      barrier: Callable[[], None]) -> None:
    done = directory / "COMPLETE"
    if rank == 0 and not done.exists():
        write = write_synthetic_labelled if d.kind == "labelled" else write_synthetic_captions
        write(directory, d.synthetic_samples, seed=0, size=size)
        done.touch()  # last: a crash mid-way leaves no COMPLETE and the next run rebuilds
    barrier()


def load_dataset(d: EncoderDatasetConfig, cache_dir: str, image: ImageSettings, max_bad_fraction: float,
                 rank: int = 0, world: int = 1, gather: Optional[Callable[[str], list]] = None) -> EncoderDataset:
    """One configured dataset, its units indexed (each rank its share) and loaded."""
    gather = gather or (lambda message: [message])
    path = d.path
    if not path:
        directory = synthetic_dir(cache_dir, d)
        _ensure_synthetic(directory, d, d.image_size or image.default_size, rank, lambda: gather(""))
        path = str(directory)
    units = [u for u in list_shards(path) if not u.endswith(".tmp")]
    ensure_units(units, rank, world, gather)
    class_names = None
    if d.kind == "labelled":
        names_file = d.class_names or os.path.join(path if os.path.isdir(path) else os.path.dirname(units[0]),
                                                   CLASSES_FILE)
        if not os.path.isfile(names_file):
            raise DataError(f"encoder dataset {d.name}: no class names ({names_file} is missing; set its class_names "
                            f"to a file with one name per line)")
        class_names = read_class_names(names_file)
    return EncoderDataset(d.name, d.kind, [load_unit(u) for u in units], class_names, d.eval_samples,
                          max_bad_fraction)


def build_encoder_data(datasets: Sequence[EncoderDatasetConfig], pairs: Sequence[PairConfig], schedule: str,
                       templates: Sequence[str], text_max_length: int, tokenizer, image: ImageSettings,
                       cache_dir: str, max_bad_fraction: float, seed: int, rank: int = 0, world: int = 1,
                       gather: Optional[Callable[[str], list]] = None, logger=None) -> EncoderData:
    """Every dataset a pair uses, the readers, and this rank's PairBatches."""
    loaded, readers = {}, {}
    for d in datasets:
        loaded[d.name] = load_dataset(d, cache_dir, image, max_bad_fraction, rank, world, gather)
        readers[d.name] = ImageReader(d.image_size or image.default_size, image.min_size, image.patch_size)
        if logger is not None:
            ds = loaded[d.name]
            classes = f", {len(ds.class_names)} classes" if ds.class_names else ""
            logger.info(f"data: encoder dataset {d.name} ({d.kind}{classes}): {len(ds.train_ids)} training samples, "
                        f"{len(ds.eval_ids)} held out, {ds.bad_count} of {ds.total} unusable")
    prompts = PromptRenderer(templates, seed)
    specs = [PairSpec(pair_name(p), p.objective, loaded[p.dataset], p.batch_size, readers[p.dataset]) for p in pairs]
    order = PairSchedule([p.weight for p in pairs], schedule, seed)
    train = PairBatches(specs, order, tokenizer, prompts, text_max_length, seed, rank, world)
    classified = [p.dataset for p in pairs if p.objective == "softmax"]
    return EncoderData(train, loaded, readers, prompts, tokenizer, classified)


def build_encoder_stage_data(cfg, groups, logger) -> EncoderData:
    """Stage 0's data from a run's config (aria_train.train.run_config.RunConfig: `encoder`,
    `data`, `vision`, `projector`, `train.seed` are read) on the ranks of `groups`."""
    import torch.distributed as dist

    from aria_train.data.multimodal.render import ImageConfig
    from aria_train.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(cfg.data.tokenizer_model, cfg.data.tokenizer_type)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise DataError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                        f"{tokenizer.vocab_size} tokens (the text tower embeds them)")
    crops = ImageConfig.from_projector(cfg.projector, patch_size=cfg.vision.patch_size)
    image = ImageSettings(crops.resolutions["medium"], crops.effective_min_size, cfg.vision.patch_size)

    def gather(message: str) -> list:  # every rank's message; a barrier too
        if not groups.distributed:
            return [message]
        messages = [None] * groups.world_size
        dist.all_gather_object(messages, message, group=groups.world_group)
        return messages

    enc = cfg.encoder
    return build_encoder_data(enc.datasets, enc.pairs, enc.schedule, enc.prompts, enc.text.max_length, tokenizer,
                              image, cfg.data.cache_dir, cfg.data.max_bad_fraction, cfg.train.seed, groups.rank,
                              groups.world_size, gather, logger)
