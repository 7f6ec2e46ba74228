"""The data a stage trains on: datasets built from the config, cut into per-rank micro-batches.

Stage 1 reads Megatron-format language data (or the offline demo corpus when
`data.data_path` is empty).
"""

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

from aria_train.config.schema import ConfigError, RunConfig
from aria_train.data.batches import MicroBatchIterator
from aria_train.data.demo_corpus import ensure_demo_corpus
from aria_train.data.gpt_data import build_gpt_datasets
from aria_train.data.tokenizer import load_tokenizer
from aria_train.parallel import distributed as dist_utils


@dataclass
class StageData:
    train: MicroBatchIterator
    valid_factory: Optional[Callable[[], MicroBatchIterator]]  # a fresh pass over the same batches
    tokenizer: object


def build_stage_data(cfg: RunConfig, groups, logger) -> StageData:
    tokenizer = load_tokenizer(cfg.data.tokenizer_model)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size} tokens"
        )
    data_cfg = cfg.data
    if not data_cfg.data_path:
        if dist_utils.rank() == 0:  # one rank builds; the others find it built
            ensure_demo_corpus(data_cfg.cache_dir, tokenizer)
        dist_utils.barrier()
        prefix = ensure_demo_corpus(data_cfg.cache_dir, tokenizer)
        logger.info(f"data: offline demo corpus {prefix}")
        data_cfg = dataclasses.replace(data_cfg, data_path=[str(prefix)])

    train_cfg = cfg.train
    train_samples = train_cfg.train_iters * train_cfg.global_batch_size
    eval_rounds = train_cfg.train_iters // train_cfg.eval_interval + 1 if train_cfg.eval_interval else 0
    valid_samples = max(eval_rounds * train_cfg.eval_iters * train_cfg.global_batch_size, 1)
    train_set, valid_set, _ = build_gpt_datasets(
        data_cfg, tokenizer, (train_samples, valid_samples, 0), train_cfg.seed
    )

    def batches(dataset) -> MicroBatchIterator:
        return MicroBatchIterator(
            dataset, train_cfg.global_batch_size, train_cfg.micro_batch_size, groups.rank, groups.world_size
        )

    valid_factory = (lambda: batches(valid_set)) if valid_set is not None and eval_rounds else None
    return StageData(batches(train_set), valid_factory, tokenizer)
