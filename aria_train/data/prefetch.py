"""Global batches loaded and decoded off the training thread, handed over in pinned memory.

    batches = BackgroundBatches(iterator, prefetch=2)   # iterator: a MicroBatchIterator or the
    batches.next_global_batch()                          # multimodal one (next_global_batch,
    batches.state_dict()                                 # state_dict, load_state_dict)

A torch DataLoader worker process (one: the stream is sequential, its order a function of the
sample counter) runs a copy of the iterator `prefetch` global batches ahead: reading Megatron
data, tokenising, packing, decoding and cropping images all happen there, in parallel with the
training step, not between steps. With CUDA the DataLoader pins every tensor of a batch (its
pin-memory thread), so the trainer's `.to(device, non_blocking=True)` is a real asynchronous
copy; without pinned memory `non_blocking` does nothing.

Exact resume: the worker reports, with each global batch, the iterator's state right after it;
state_dict() returns the state that goes with the last batch the trainer TOOK, never how far the
worker has read ahead, so a checkpoint resumes exactly where training stopped.
load_state_dict() stops the worker, loads the position into the iterator here, and the next
next_global_batch() starts a new worker from it. An error in the worker (a DataError for bad
data, say) is raised here as the same exception.

The worker is forked from the training process when the first batch is asked for (after any
resume); the DataLoader's seed comes from its own generator, so the process's torch RNG (saved
in checkpoints) is not drawn from.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, IterableDataset


class _GlobalBatchStream(IterableDataset):
    """In the worker: (micro-batches, iterator state after them), forever; an error once."""

    def __init__(self, iterator):
        super().__init__()
        self.iterator = iterator

    def __iter__(self):
        while True:
            try:
                batches = self.iterator.next_global_batch()
            except Exception as error:  # handed to the training process as it is
                yield _WorkerError(error)
                return
            yield batches, self.iterator.state_dict()


class _WorkerError:
    def __init__(self, error: BaseException):
        self.error = error


class BackgroundBatches:
    def __init__(self, iterator, prefetch: int = 2, pin_memory: Optional[bool] = None):
        if prefetch < 1:
            raise ValueError(f"prefetch={prefetch}: at least one global batch ahead (0 = use the iterator itself)")
        self.iterator = iterator
        self.prefetch = prefetch
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._state = iterator.state_dict()
        self._batches: Any = None  # the DataLoader's iterator while a worker runs

    @property
    def num_micro_batches(self) -> int:
        return self.iterator.num_micro_batches

    @property
    def bad_samples(self):
        """Data that skips bad samples (the multimodal iterator): its BadSamples as of the last
        batch handed out, counted by the worker; None for data without."""
        at = getattr(self.iterator, "bad_samples_at", None)
        return at(self._state) if at is not None else None

    def next_global_batch(self) -> list[dict]:
        if self._batches is None:
            self._batches = iter(self._loader())
        item = next(self._batches)
        if isinstance(item, _WorkerError):
            self.close()
            raise item.error
        batches, self._state = item
        return batches

    def __iter__(self):
        while True:
            yield self.next_global_batch()

    def _loader(self) -> DataLoader:
        return DataLoader(_GlobalBatchStream(self.iterator), batch_size=None, num_workers=1,
                          prefetch_factor=self.prefetch, pin_memory=self.pin_memory,
                          generator=torch.Generator().manual_seed(0))

    def state_dict(self) -> dict:
        """The position after the last global batch handed out (not the worker's)."""
        return self._state

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self.iterator.load_state_dict(state)
        self._state = self.iterator.state_dict()

    def close(self) -> None:
        """Stops the worker (the next batch starts a new one at the consumed position)."""
        if self._batches is not None:
            batches, self._batches = self._batches, None
            getattr(batches, "_shutdown_workers", lambda: None)()  # also what its __del__ would do
        self.iterator.load_state_dict(self._state)
