"""data.packing: clustered -- samples that are whole groups of similar documents.

tools/cluster_pack.py writes PREFIX.bin/.idx with its documents ordered group by group, and
    PREFIX.groups.npy   int64 [G + 1]: group g is documents [b[g], b[g+1])
    PREFIX.groups.json  how it was made (seq_length, embedder, k, ...); written last.
A group's tokens fit one sample of seq_length + 1 tokens (a document longer than that is a group
of its own, cut into Megatron-style overlapping windows of seq_length + 1 tokens). Sample i:
    epoch, position = divmod(i, units of the split)
    unit = permutation(seed, split, epoch)[position]   # the shuffle is over groups, not documents
    tokens = the unit's documents concatenated, padded with pad to seq_length + 1
labels are tokens shifted by one; loss_mask is 0 where the label is padding. A sample is a pure
function of (seed, i), so the micro-batch iterator's consumed_samples resumes it exactly, as it
does megatron's GPTDataset. Groups split into train/valid/test by data.split, in group order.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from aria_train.data.blend_spec import parse_blend, parse_split
from aria_train.data.errors import DataError
from aria_train.data.indexed_check import check_indexed_dataset
from aria_train.data.megatron_import import import_megatron

GROUPS_SUFFIX = ".groups.npy"
META_SUFFIX = ".groups.json"


def read_groups(prefix: str, num_documents: int) -> tuple[np.ndarray, dict]:
    """The group boundaries of a clustered dataset, checked against its document count."""
    meta_path, groups_path = prefix + META_SUFFIX, prefix + GROUPS_SUFFIX
    if not os.path.isfile(meta_path) or not os.path.isfile(groups_path):
        raise DataError(f"data prefix {prefix}: no {GROUPS_SUFFIX} / {META_SUFFIX} beside it; data.packing=clustered "
                        f"needs a dataset written by tools/cluster_pack.py")
    try:
        meta = json.loads(open(meta_path).read())
        boundaries = np.load(groups_path)
    except (OSError, ValueError) as err:
        raise DataError(f"data prefix {prefix}: unreadable group files ({err})") from None
    if (boundaries.ndim != 1 or len(boundaries) < 2 or boundaries[0] != 0 or boundaries[-1] != num_documents
            or np.any(np.diff(boundaries) <= 0)):
        raise DataError(f"{groups_path}: group boundaries do not cover the {num_documents} documents of {prefix}")
    return boundaries.astype(np.int64), meta


class ClusteredGPTDataset(torch.utils.data.Dataset):
    def __init__(self, prefix: str, seq_length: int, num_samples: int, seed: int, split_index: int,
                 split_fractions: list, pad: int):
        info = check_indexed_dataset(prefix)
        if info.document_count != info.sequence_count:
            raise DataError(f"data prefix {prefix}: documents made of several sequences are not supported")
        boundaries, self.meta = read_groups(prefix, info.document_count)
        packed = int(self.meta.get("seq_length", seq_length))
        if packed > seq_length:
            raise DataError(f"data prefix {prefix}: packed for seq_length {packed}, larger than data.seq_length "
                            f"{seq_length}; re-run tools/cluster_pack.py --seq-length {seq_length}")
        groups = len(boundaries) - 1
        start = sum(split_fractions[:split_index])
        first, last = round(start * groups), round((start + split_fractions[split_index]) * groups)
        self.boundaries = boundaries[first:last + 1]
        lengths = np.asarray(info.sequence_lengths, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)])
        group_tokens = starts[self.boundaries[1:]] - starts[self.boundaries[:-1]]
        windows = np.maximum(1, -(-(group_tokens - 1) // seq_length))  # Megatron-style windows
        self.unit_group = np.repeat(np.arange(len(group_tokens)), windows)
        self.unit_window = np.arange(len(self.unit_group)) - np.repeat(np.cumsum(windows) - windows, windows)
        if len(self.unit_group) == 0:
            raise DataError(f"data prefix {prefix}: split {split_index} of {split_fractions} holds none of its "
                            f"{groups} groups; change data.split or add documents")
        self.prefix, self.seq_length, self.num_samples = prefix, seq_length, int(num_samples)
        self.seed, self.split_index, self.pad = int(seed), split_index, int(pad)
        self.indexed = import_megatron("megatron.core.datasets.indexed_dataset").IndexedDataset(prefix)
        self._epoch, self._permutation = -1, None

    def __len__(self) -> int:
        return self.num_samples

    @property
    def num_units(self) -> int:
        return len(self.unit_group)

    def unit_of(self, index: int) -> int:
        """The (group, window) unit sample `index` reads: the epoch's shuffle of the units."""
        epoch, position = divmod(int(index), self.num_units)
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, self.split_index, epoch])
            self._epoch, self._permutation = epoch, rng.permutation(self.num_units)
        return int(self._permutation[position])

    def group_documents(self, group: int) -> range:
        return range(int(self.boundaries[group]), int(self.boundaries[group + 1]))

    def __getitem__(self, index: int) -> dict:
        unit = self.unit_of(index)
        group, window = int(self.unit_group[unit]), int(self.unit_window[unit])
        text = np.concatenate([self.indexed.get(d) for d in self.group_documents(group)]).astype(np.int64)
        text = text[window * self.seq_length: window * self.seq_length + self.seq_length + 1]
        real = len(text)
        text = np.concatenate([text, np.full(self.seq_length + 1 - real, self.pad, dtype=np.int64)])
        loss_mask = (np.arange(self.seq_length) < real - 1).astype(np.float32)
        return {
            "tokens": torch.from_numpy(text[:-1].copy()),
            "labels": torch.from_numpy(text[1:].copy()),
            "loss_mask": torch.from_numpy(loss_mask),
            "position_ids": torch.arange(self.seq_length, dtype=torch.int64),
        }


def build_clustered_datasets(data_cfg, tokenizer, num_samples: tuple, seed: int) -> tuple:
    """(train, valid, test) ClusteredGPTDatasets of a cluster_pack output (None where 0 samples)."""
    if not data_cfg.data_path:
        raise DataError("data.packing=clustered needs data.data_path: a prefix written by tools/cluster_pack.py")
    prefixes, _ = parse_blend(data_cfg.data_path)
    if len(prefixes) != 1:
        raise DataError(f"data.packing=clustered takes one data prefix, got {len(prefixes)}: cluster a blend "
                        f"into one dataset with tools/cluster_pack.py")
    _, fractions = parse_split(data_cfg.split)
    return tuple(
        ClusteredGPTDataset(prefixes[0], int(data_cfg.seq_length), n, seed, i, fractions, tokenizer.pad)
        if int(n) > 0 else None
        for i, n in enumerate(num_samples)
    )

