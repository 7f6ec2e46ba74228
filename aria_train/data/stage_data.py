"""The data a stage trains on: datasets built from the config, cut into per-rank micro-batches.

Stage 1 reads Megatron-format language data (or the offline demo corpus when `data.data_path`
is empty). Multimodal stages mix that language data with image-text shards (or the synthetic
demo shards when `data.mm_data_path` is empty), packed into `seq_length` sequences.

`cfg` is a run's config (aria_train.train.run_config.RunConfig: `data`, `train`, `model`,
`vision`, `projector` and `multimodal` are read); `groups` its ParallelGroups (rank, world size).
"""

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch.distributed as dist

from aria_train.config import ConfigError
from aria_train.data.batches import MicroBatchIterator
from aria_train.data.demo_corpus import ensure_demo_corpus
from aria_train.data.gpt_data import build_gpt_datasets
from aria_train.data.prefetch import BackgroundBatches
from aria_train.data.tokenizer import load_tokenizer


@dataclass
class StageData:
    train: object  # MicroBatchIterator | MultimodalMicroBatchIterator, in BackgroundBatches (data.prefetch)
    valid_factory: Optional[Callable[[], object]]  # a fresh pass over the same validation batches
    tokenizer: object


def build_stage_data(cfg, groups, logger) -> StageData:
    tokenizer = load_tokenizer(cfg.data.tokenizer_model, cfg.data.tokenizer_type)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size} tokens"
        )
    data_cfg = _with_language_data(cfg, groups, tokenizer, logger)
    train_cfg = cfg.train
    train_samples = train_cfg.train_iters * train_cfg.global_batch_size
    eval_rounds = train_cfg.train_iters // train_cfg.eval_interval + 1 if train_cfg.eval_interval else 0
    valid_samples = max(eval_rounds * train_cfg.eval_iters * train_cfg.global_batch_size, 1)
    train_set, valid_set, _ = build_gpt_datasets(data_cfg, tokenizer, (train_samples, valid_samples, 0), train_cfg.seed)
    if data_cfg.packing == "clustered":
        logger.info(f"data: clustered packing, {len(train_set.boundaries) - 1} groups of similar documents "
                    f"({train_set.num_units} sequences), shuffled by group")

    def batches(dataset) -> MicroBatchIterator:
        return MicroBatchIterator(
            dataset, train_cfg.global_batch_size, train_cfg.micro_batch_size, groups.rank, groups.world_size,
            eod=tokenizer.eod, reset_position_ids=data_cfg.reset_position_ids,
            reset_attention_mask=data_cfg.reset_attention_mask,
        )

    if cfg.multimodal:
        stage = _multimodal_stage_data(cfg, groups, logger, tokenizer, train_set, valid_set, eval_rounds)
    else:
        valid_factory = (lambda: batches(valid_set)) if valid_set is not None and eval_rounds else None
        stage = StageData(batches(train_set), valid_factory, tokenizer)
    if data_cfg.prefetch > 0:  # loading and decoding in a background worker, batches pinned
        stage.train = BackgroundBatches(stage.train, data_cfg.prefetch)
    return stage


def _barrier(groups) -> None:
    if groups.distributed:
        dist.barrier(group=groups.world_group)


def _with_language_data(cfg, groups, tokenizer, logger):
    data_cfg = cfg.data
    if data_cfg.data_path:
        return data_cfg
    if groups.rank == 0:  # one rank builds; the others find it built
        ensure_demo_corpus(data_cfg.cache_dir, tokenizer)
    _barrier(groups)
    prefix = ensure_demo_corpus(data_cfg.cache_dir, tokenizer)
    logger.info(f"data: offline demo corpus {prefix}")
    return dataclasses.replace(data_cfg, data_path=[str(prefix)])


def _multimodal_stage_data(cfg, groups, logger, tokenizer, train_set, valid_set, eval_rounds) -> StageData:
    from aria_train.data.multimodal import (
        ImageConfig,
        LanguageSource,
        MultimodalMicroBatchIterator,
        MultimodalMixture,
        ShardSource,
        ensure_indexes,
        list_shards,
    )

    data_cfg, train_cfg = cfg.data, cfg.train
    image_cfg = ImageConfig.from_projector(cfg.projector, patch_size=cfg.vision.patch_size, mode=data_cfg.image_mode,
                                           split=data_cfg.image_split, media=media_settings(cfg))
    shard_sets = _multimodal_shard_sets(cfg, groups, logger, tokenizer)
    total_mm = sum(weight for weight, _ in shard_sets)
    image_root = data_cfg.mm_image_root or None
    units = [unit for _, directory in shard_sets for unit in list_shards(directory)]
    # Every rank indexes its share of the units that lack a current length index, then all agree.
    ensure_indexes(units, tokenizer, image_root, groups.rank, groups.world_size,
                   functools.partial(_gather_messages, groups), logger)

    def mixture(language_set, split_seed: int, log_bad: tuple[int, bool]) -> MultimodalMixture:
        sources = []
        if data_cfg.language_weight > 0:
            # GPTDataset chunks are seq_length tokens + the last label: packing needs no read
            sources.append((data_cfg.language_weight, LanguageSource(language_set, doc_length=data_cfg.seq_length + 1)))
        for weight, directory in shard_sets:
            share = (1.0 - data_cfg.language_weight) * weight / total_mm
            sources.append((share, ShardSource(directory, seed=split_seed, image_root=image_root, build_indexes=False)))
        return MultimodalMixture(sources, data_cfg.seq_length, split_seed, tokenizer=tokenizer, image_cfg=image_cfg,
                                 on_bad_sample=data_cfg.on_bad_sample, formats=data_cfg.mm_formats,
                                 max_bad_fraction=data_cfg.max_bad_fraction,
                                 bad_sample_window=data_cfg.bad_sample_window, mix_by=data_cfg.mix_by, log_bad=log_bad)

    def batches(language_set, split_seed: int, log_bad=(0, False)) -> MultimodalMicroBatchIterator:
        return MultimodalMicroBatchIterator(mixture(language_set, split_seed, log_bad), train_cfg.global_batch_size,
                                            train_cfg.micro_batch_size, groups.rank, groups.world_size,
                                            reset_position_ids=data_cfg.reset_position_ids,
                                            reset_attention_mask=data_cfg.reset_attention_mask)

    valid_factory = None
    if valid_set is not None and eval_rounds:
        # Validation draws from the same shards with another seed: a held-out order, not held-out
        # data; point data.mm_data_path at separate shards for a true held-out set. Its bad samples
        # are the training data's, already logged: it logs none.
        valid_factory = lambda: batches(valid_set, train_cfg.seed + 1)  # noqa: E731
    # Damage every rank sees is logged by rank 0; pixel decode failures by the rank that decodes.
    return StageData(batches(train_set, train_cfg.seed, log_bad=(10, groups.rank == 0)), valid_factory, tokenizer)


def media_settings(cfg):
    """What the data side needs of IMP's options: tubelet clips (vision.patch=tubelet) and audio
    (audio.input), as plain sizes (aria_train.data.multimodal.media.MediaSettings)."""
    from aria_train.data.multimodal.media import MediaSettings

    vision, audio = cfg.vision, cfg.audio
    return MediaSettings(tubelet_frames=vision.tubelet_frames if vision.patch == "tubelet" else 0,
                         max_frames=vision.max_frames,
                         audio=audio.feature_spec() if audio.enabled else None,
                         audio_queries=audio.queries_for(cfg.projector) if audio.enabled else 0)


def _gather_messages(groups, message: str) -> list:
    """Every rank's message (a barrier too)."""
    if not groups.distributed:
        return [message]
    messages = [None] * groups.world_size
    dist.all_gather_object(messages, message, group=groups.world_group)
    return messages


def _multimodal_shard_sets(cfg, groups, logger, tokenizer) -> list[tuple[float, str]]:
    from aria_train.data.multimodal import write_synthetic_shards

    data_cfg = cfg.data
    if data_cfg.mm_data_path:
        pairs = data_cfg.mm_data_path
        sets = []
        for weight, directory in zip(pairs[::2], pairs[1::2]):
            try:
                sets.append((float(weight), directory))
            except ValueError:
                raise ConfigError(f"data.mm_data_path: {weight!r} is not a weight (expected weight dir pairs)")
        return sets
    kind = data_cfg.synthetic_kind or None
    directory = Path(data_cfg.cache_dir) / f"synthetic_{kind or 'mixed'}_{data_cfg.synthetic_samples}"
    done = directory / "COMPLETE"
    if groups.rank == 0 and not done.exists():
        write_synthetic_shards(directory, data_cfg.synthetic_samples, seed=0, size=70, kind=kind, tokenizer=tokenizer)
        done.touch()  # written last: a crash mid-way leaves no COMPLETE, and the next run rebuilds
    _barrier(groups)
    logger.info(f"data: synthetic demo shards {directory}")
    return [(1.0, str(directory))]
