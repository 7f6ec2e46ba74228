"""Global batches loaded in a background worker process (issue 15, defect 9): same batches as the
iterator on the training thread, the position saved is the one the trainer took (not how far the
worker read ahead), resume restarts the worker there, and worker errors arrive as themselves."""

import os

import pytest
import torch

from aria_train.data.errors import DataError
from aria_train.data.prefetch import BackgroundBatches


class CountingIterator:
    """A stand-in micro-batch iterator: batch k holds k and the pid of the process that made it."""

    num_micro_batches = 2

    def __init__(self, fail_at=None):
        self.consumed_samples = 0
        self.fail_at = fail_at

    def next_global_batch(self):
        k = self.consumed_samples
        if k == self.fail_at:
            raise DataError(f"shard x.tar: sample {k} is corrupt")
        self.consumed_samples += 1
        return [{"k": torch.tensor([k, m]), "pid": torch.tensor(os.getpid())} for m in range(2)]

    def state_dict(self):
        return {"consumed_samples": self.consumed_samples}

    def load_state_dict(self, state):
        self.consumed_samples = int(state["consumed_samples"])


def test_batches_come_from_a_worker_process_in_order():
    batches = BackgroundBatches(CountingIterator(), prefetch=3)
    try:
        for k in range(5):
            micro = batches.next_global_batch()
            assert [m["k"].tolist() for m in micro] == [[k, 0], [k, 1]]
            assert int(micro[0]["pid"]) != os.getpid()
    finally:
        batches.close()


def test_state_is_what_the_trainer_took_and_resume_continues_there():
    batches = BackgroundBatches(CountingIterator(), prefetch=4)
    try:
        batches.next_global_batch()
        batches.next_global_batch()
        # the worker has read ahead by now; the saved position is still 2
        assert batches.state_dict() == {"consumed_samples": 2}
        resumed = BackgroundBatches(CountingIterator(), prefetch=2)
        resumed.load_state_dict(batches.state_dict())
        assert resumed.next_global_batch()[0]["k"].tolist() == batches.next_global_batch()[0]["k"].tolist() == [2, 0]
        batches.load_state_dict({"consumed_samples": 7})  # a load mid-run restarts the worker
        assert batches.next_global_batch()[0]["k"].tolist() == [7, 0]
        resumed.close()
    finally:
        batches.close()


def test_a_worker_error_is_raised_as_itself():
    batches = BackgroundBatches(CountingIterator(fail_at=2), prefetch=2)
    batches.next_global_batch()
    batches.next_global_batch()
    with pytest.raises(DataError, match=r"^shard x.tar: sample 2 is corrupt$"):
        batches.next_global_batch()
    assert batches.state_dict() == {"consumed_samples": 2}


def test_stage_data_loads_in_the_background_and_gives_the_same_batches(tmp_path):
    from aria_train.data.stage_data import build_stage_data
    from aria_train.parallel.groups import ParallelGroups
    from aria_train.train.run_config import build_config

    class Quiet:
        def info(self, message):
            pass

    def first_batches(prefetch):
        cfg = build_config(1, overrides={"data.cache_dir": str(tmp_path), "data.prefetch": prefetch,
                                         "train.train_iters": 4})
        train = build_stage_data(cfg, ParallelGroups(), Quiet()).train
        out = [train.next_global_batch() for _ in range(3)]
        state = train.state_dict()
        if hasattr(train, "close"):
            train.close()
        return type(train).__name__, out, state

    name, background, state = first_batches(2)
    plain_name, plain, plain_state = first_batches(0)
    assert (name, plain_name) == ("BackgroundBatches", "MicroBatchIterator")
    assert state == plain_state
    for a, b in zip(background, plain):
        for ma, mb in zip(a, b):
            assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
