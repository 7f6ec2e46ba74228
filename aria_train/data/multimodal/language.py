"""LanguageSource: the text documents mixed into the multimodal stream."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from aria_train.data.errors import DataError


class LanguageSource:
    """Documents from a dataset of token sequences: dataset[i] is a 1-D sequence of token ids
    (a list, numpy array or tensor, e.g. megatron's IndexedDataset), or a GPTDataset sample dict
    (tokens + labels: the chunk is tokens followed by labels[-1]; loss_mask is kept). Read in
    index order 0, 1, ..., wrapping around (GPTDataset has shuffled already). cursor = {"index"}.

    doc_length: the length every document has (GPTDataset: seq_length + 1), so packing needs no
    read; None = read the document to learn its length."""

    kind = "language"

    def __init__(self, dataset, name: str = "language", append_eod: Optional[int] = None,
                 doc_length: Optional[int] = None):
        if dataset is None or len(dataset) == 0:
            raise DataError(f"language source {name}: the dataset is empty")
        self.dataset = dataset
        self.name = name
        self.append_eod = append_eod
        self.doc_length = doc_length
        self._index = 0
        self._last = (None, None)  # (index, (tokens, target)): plan and render read it once

    def next_index(self) -> int:
        index = self._index
        self._index += 1
        return index

    def length(self, index: int) -> int:
        if self.doc_length is not None:
            return int(self.doc_length)
        return len(self.document(index)[0])

    def document(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens int64 [L], target bool [L]) of document `index`."""
        if self._last[0] == index:
            return self._last[1]
        item = self.dataset[index % len(self.dataset)]
        if isinstance(item, dict):
            tokens = np.asarray(torch.as_tensor(item["tokens"]).cpu(), dtype=np.int64)
            target = np.ones(len(tokens), dtype=bool)
            if "labels" in item:
                labels = np.asarray(torch.as_tensor(item["labels"]).cpu(), dtype=np.int64)
                tokens = np.concatenate([tokens, labels[-1:]])
                target = np.ones(len(tokens), dtype=bool)
                if "loss_mask" in item:
                    target[1:] = np.asarray(torch.as_tensor(item["loss_mask"]).cpu()) > 0
        else:
            tokens = np.asarray(torch.as_tensor(item).cpu() if isinstance(item, torch.Tensor) else item, dtype=np.int64)
            tokens = tokens.reshape(-1)
            target = np.ones(len(tokens), dtype=bool)
        if self.append_eod is not None and (len(tokens) == 0 or tokens[-1] != self.append_eod):
            tokens = np.append(tokens, np.int64(self.append_eod))
            target = np.append(target, True)
        if self.doc_length is not None and len(tokens) != self.doc_length:
            raise DataError(f"language source {self.name}: document {index} has {len(tokens)} tokens, "
                            f"expected {self.doc_length}")
        self._last = (index, (tokens, target))
        return tokens, target

    def read(self) -> tuple[np.ndarray, np.ndarray, dict]:
        """The next document: (tokens, target, its cursor)."""
        index = self.next_index()
        tokens, target = self.document(index)
        return tokens, target, {"index": index}

    def state_dict(self) -> dict:
        return {"index": self._index}

    def load_state_dict(self, state: dict) -> None:
        try:
            index = int(state["index"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"language source {self.name} state {state!r}: expected an 'index'")
        if index < 0:
            raise DataError(f"language source {self.name} state: index {index} is negative")
        self._index = index
