"""Train/valid/test GPT datasets from a DataConfig, built by megatron-core.

megatron-core's BlendedMegatronDatasetBuilder + GPTDataset do the work, so corpora written by
Megatron-LM's preprocess_data.py load as they are and sample order matches Megatron-LM for the
same blend, split, seed and sizes. What this module adds around them:
- an empty data_path means the demo corpus, built on rank 0 under cache_dir;
- every prefix is checked first (missing or corrupt .bin/.idx, a split left without documents,
  which would make megatron loop forever) and reported as one DataError line;
- a split asked for 0 samples is not built and comes back as None;
- megatron's index caches go to cache_dir/index_cache;
- without torch.distributed, a world of one is set up for the duration of the build, because
  megatron's BlendedDataset calls torch.distributed.get_rank() unguarded when it writes its cache.

With torch.distributed initialized every rank must call build_gpt_datasets: rank 0 builds the
caches, the others wait at a barrier and then read them, so cache_dir must be on a file system
all ranks see.
"""

import os
from contextlib import contextmanager

import torch.distributed as dist

from aria_train.data.blend_spec import parse_blend, parse_split
from aria_train.data.demo_corpus import ensure_demo_corpus
from aria_train.data.errors import DataError
from aria_train.data.indexed_check import check_indexed_dataset
from aria_train.data.megatron_import import import_megatron
from aria_train.data.tokenizer import AriaTokenizer

SPLIT_NAMES = ("train", "valid", "test")


def build_gpt_datasets(data_cfg, tokenizer: AriaTokenizer, num_samples: tuple, seed: int) -> tuple:
    """(train, valid, test) megatron datasets of num_samples samples each (None where 0).

    Each sample is a dict of torch tensors of length data_cfg.seq_length: tokens, labels
    (tokens shifted by one), loss_mask, position_ids; blends add dataset_id.
    """
    if len(num_samples) != 3 or any(int(n) < 0 for n in num_samples):
        raise DataError(f"num_samples {num_samples!r}: expected (train, valid, test) counts >= 0")
    if int(data_cfg.seq_length) < 1:
        raise DataError(f"data seq_length {data_cfg.seq_length}: must be positive")
    if data_cfg.packing == "clustered":  # groups of similar documents, tools/cluster_pack.py
        from aria_train.data.curation.clustered_dataset import build_clustered_datasets

        return build_clustered_datasets(data_cfg, tokenizer, num_samples, seed)
    split, fractions = parse_split(data_cfg.split)
    if data_cfg.data_path:
        prefixes, weights = parse_blend(data_cfg.data_path)
    else:
        prefixes, weights = [_demo_corpus_on_rank0(data_cfg.cache_dir, tokenizer)], None
    infos = [check_indexed_dataset(prefix) for prefix in prefixes]
    sizes = [int(n) for n in num_samples]

    gpt = import_megatron("megatron.core.datasets.gpt_dataset")
    builder_module = import_megatron("megatron.core.datasets.blended_megatron_dataset_builder")
    config = gpt.GPTDatasetConfig(
        random_seed=int(seed),
        sequence_length=int(data_cfg.seq_length),
        blend=(prefixes, weights),
        split=split,
        path_to_cache=os.path.join(data_cfg.cache_dir, "index_cache"),
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        # the model builds its causal mask itself; a [1, S, S] mask per sample is wasted work
        create_attention_mask=False,
    )
    for i, size in enumerate(sizes):
        if size == 0:
            config.split_matrix[i] = None
    for info in infos:
        _check_splits_have_tokens(info, config.split_matrix, split)

    builder = builder_module.BlendedMegatronDatasetBuilder(
        gpt.GPTDataset, sizes, lambda: True, config
    )
    with _world_of_one_if_needed():
        datasets = builder.build()
    return tuple(datasets)


def _demo_corpus_on_rank0(cache_dir: str, tokenizer: AriaTokenizer) -> str:
    if dist.is_available() and dist.is_initialized():
        if dist.get_rank() == 0:
            prefix = ensure_demo_corpus(cache_dir, tokenizer)
        dist.barrier()
        if dist.get_rank() != 0:
            prefix = ensure_demo_corpus(cache_dir, tokenizer)  # built by now: only checks
        return prefix
    return ensure_demo_corpus(cache_dir, tokenizer)


def _check_splits_have_tokens(info, split_matrix, split: str) -> None:
    # GPTDataset adds epochs until it has enough tokens: with none it never stops.
    n = info.sequence_count
    for name, bounds in zip(SPLIT_NAMES, split_matrix):
        if bounds is None:
            continue
        begin, end = int(round(bounds[0] * n)), int(round(bounds[1] * n))
        if info.sequence_lengths[begin:end].sum(dtype="int64") == 0:
            raise DataError(
                f"data prefix {info.prefix}: the {name} split is empty (split {split!r} gives it "
                f"documents [{begin}, {end}) of {n}); add documents, change the split, or ask 0 "
                f"{name} samples"
            )


@contextmanager
def _world_of_one_if_needed():
    if not dist.is_available() or dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
