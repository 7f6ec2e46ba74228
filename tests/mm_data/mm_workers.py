"""Functions spawned ranks run for the multimodal multi-rank tests (importable by the children)."""

import os

from aria_train.data.errors import DataError


def index_share_and_agree(rank: int, world: int, shard_dir: str, blocked: str, out_dir: str) -> None:
    """Every rank indexes its share; one unit's index cannot be written (its path is a folder):
    every rank must raise the same one-line DataError, none must hang."""
    import torch.distributed as dist

    from aria_train.data.multimodal import ensure_indexes, list_shards
    from aria_train.data.tokenizer import load_tokenizer

    def gather(message):
        messages = [None] * world
        dist.all_gather_object(messages, message)
        return messages

    try:
        ensure_indexes(list_shards(shard_dir), load_tokenizer(""), None, rank, world, gather)
        result = "no error"
    except DataError as err:
        result = str(err)
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write(result)
    assert blocked in result
