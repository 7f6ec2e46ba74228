"""Deterministic, resumable micro-batches for data-parallel training.

The data order is a pure function of the sample counter, never of the world size:
- global batch k of size G covers dataset samples [c, c + G) where c is consumed_samples before
  it (c = k*G when G never changed), taken modulo len(dataset), so a run longer than the dataset
  wraps around (megatron's GPTDataset has already shuffled, and repeats its own epochs inside);
- data-parallel rank r of W owns the contiguous slice [c + r*G/W, c + (r+1)*G/W) and yields it as
  G/(W*mbs) micro-batches of mbs samples, in order.
Concatenating every rank's micro-batches, rank-major, therefore gives the same samples in the same
order for any W, and the only state worth saving is consumed_samples.
"""

from typing import Optional

import torch

from aria_train.data.documents import add_document_fields, document_ids_after_eod
from aria_train.data.errors import DataError

_FIELDS = {
    "tokens": torch.int64,
    "labels": torch.int64,
    "loss_mask": torch.float32,
    "position_ids": torch.int64,
}


def check_batch_layout(global_batch_size: int, micro_batch_size: int, dp_rank: int, dp_size: int,
                       consumed_samples: int) -> None:
    """The sizes every micro-batch iterator needs to split a global batch over ranks evenly."""
    if dp_size < 1 or not 0 <= dp_rank < dp_size:
        raise DataError(f"data-parallel rank {dp_rank} of {dp_size}: not a valid rank")
    if micro_batch_size < 1:
        raise DataError(f"micro batch size {micro_batch_size}: must be positive")
    if global_batch_size < 1 or global_batch_size % (micro_batch_size * dp_size) != 0:
        raise DataError(
            f"global batch size {global_batch_size}: must be a positive multiple of "
            f"micro_batch_size * dp_size = {micro_batch_size} * {dp_size}"
        )
    if consumed_samples < 0:
        raise DataError(f"consumed_samples {consumed_samples}: must be >= 0")


def consumed_samples_of(state: dict, what: str) -> int:
    """The position a saved iterator state holds; DataError naming `what` when it is unusable."""
    if "consumed_samples" not in state:
        raise DataError(f"{what}: no 'consumed_samples' entry")
    consumed = int(state["consumed_samples"])
    if consumed < 0:
        raise DataError(f"{what}: consumed_samples {consumed} is negative")
    return consumed


class MicroBatchIterator:
    def __init__(
        self,
        dataset,
        global_batch_size: int,
        micro_batch_size: int,
        dp_rank: int,
        dp_size: int,
        consumed_samples: int = 0,
        eod: Optional[int] = None,
        reset_position_ids: bool = False,
        reset_attention_mask: bool = False,
    ):
        check_batch_layout(global_batch_size, micro_batch_size, dp_rank, dp_size, consumed_samples)
        if (reset_position_ids or reset_attention_mask) and eod is None:
            raise DataError("micro-batch iterator: document boundaries (reset_position_ids / "
                            "reset_attention_mask) need the end-of-document token id")
        if dataset is None or len(dataset) == 0:
            raise DataError("micro-batch iterator: the dataset is empty")
        self.dataset = dataset
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.consumed_samples = consumed_samples
        self.eod = eod
        self.reset_position_ids = reset_position_ids
        self.reset_attention_mask = reset_attention_mask

    @property
    def num_micro_batches(self) -> int:
        """Micro-batches per rank per step (the gradient-accumulation steps)."""
        return self.global_batch_size // (self.micro_batch_size * self.dp_size)

    def next_global_batch(self) -> list[dict]:
        """This rank's micro-batches for the next step; advances consumed_samples by G."""
        per_rank = self.global_batch_size // self.dp_size
        start = self.consumed_samples + self.dp_rank * per_rank
        micro_batches = []
        for m in range(self.num_micro_batches):
            first = start + m * self.micro_batch_size
            indices = range(first, first + self.micro_batch_size)
            samples = [self.dataset[i % len(self.dataset)] for i in indices]
            micro_batches.append(self._collate(samples))
        self.consumed_samples += self.global_batch_size
        return micro_batches

    def __iter__(self):
        while True:
            yield self.next_global_batch()

    def state_dict(self) -> dict:
        return {"consumed_samples": self.consumed_samples}

    def load_state_dict(self, state: dict) -> None:
        self.consumed_samples = consumed_samples_of(state, "micro-batch iterator state")

    def _collate(self, samples: list[dict]) -> dict:
        batch = {
            name: torch.stack([torch.as_tensor(s[name]) for s in samples]).to(dtype)
            for name, dtype in _FIELDS.items()
        }
        if self.reset_position_ids or self.reset_attention_mask:
            documents = document_ids_after_eod(batch["tokens"], self.eod)
            add_document_fields(batch, documents, self.reset_position_ids, self.reset_attention_mask)
        return batch
