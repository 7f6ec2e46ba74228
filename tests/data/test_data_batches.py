import pytest
import torch

from aria_train.data.batches import MicroBatchIterator
from aria_train.data.errors import DataError

SEQ = 4


class CountingDataset:
    """Sample i holds tokens i*1000 + [0, SEQ): every token names its sample."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        assert 0 <= i < self.size
        tokens = torch.arange(SEQ) + 1000 * i
        return {
            "tokens": tokens,
            "labels": tokens + 1,
            "loss_mask": torch.ones(SEQ),
            "position_ids": torch.arange(SEQ),
            "dataset_id": 0,  # extra keys are dropped
        }


def sample_ids(micro_batches):
    return [int(t) // 1000 for mb in micro_batches for t in mb["tokens"][:, 0]]


def union_over_ranks(dataset, G, mbs, W, steps):
    iterators = [MicroBatchIterator(dataset, G, mbs, r, W) for r in range(W)]
    return [[mb for it in iterators for mb in it.next_global_batch()] for _ in range(steps)]


def test_micro_batch_contents():
    it = MicroBatchIterator(
        CountingDataset(100), global_batch_size=8, micro_batch_size=2, dp_rank=1, dp_size=2
    )
    batches = it.next_global_batch()
    assert it.num_micro_batches == 2 and len(batches) == 2
    assert sample_ids(batches) == [4, 5, 6, 7]  # rank 1 owns the second half of samples 0..7
    mb = batches[0]
    assert set(mb) == {"tokens", "labels", "loss_mask", "position_ids"}
    assert mb["tokens"].shape == (2, SEQ) and mb["tokens"].dtype == torch.int64
    assert mb["labels"].dtype == torch.int64 and mb["position_ids"].dtype == torch.int64
    assert mb["loss_mask"].dtype == torch.float32
    assert torch.equal(mb["tokens"][1], torch.arange(SEQ) + 5000)
    assert sample_ids(it.next_global_batch()) == [12, 13, 14, 15]
    assert it.state_dict() == {"consumed_samples": 16}


@pytest.mark.parametrize("W", [1, 2, 4])
def test_global_batch_is_the_same_for_any_dp_size(W):
    dataset = CountingDataset(50)  # 3 steps of 16 plus wrap-around on the 4th
    steps = union_over_ranks(dataset, G=16, mbs=2, W=W, steps=4)
    for s, step in enumerate(steps):
        assert sample_ids(step) == [(s * 16 + k) % 50 for k in range(16)]
    reference = union_over_ranks(dataset, G=16, mbs=2, W=1, steps=4)
    for ours, ref in zip(steps, reference):
        for key in ("tokens", "labels", "loss_mask", "position_ids"):
            cat = lambda micro_batches: torch.cat([mb[key] for mb in micro_batches])
            assert torch.equal(cat(ours), cat(ref))


def test_resume_from_state_dict_gives_identical_batches():
    dataset = CountingDataset(37)
    straight = MicroBatchIterator(dataset, 12, 3, dp_rank=1, dp_size=2)
    for _ in range(3):
        straight.next_global_batch()
    state = straight.state_dict()
    expected = [straight.next_global_batch() for _ in range(4)]

    resumed = MicroBatchIterator(dataset, 12, 3, dp_rank=1, dp_size=2)
    resumed.load_state_dict(state)
    assert state == {"consumed_samples": 36}
    for want in expected:
        got = resumed.next_global_batch()
        assert all(torch.equal(g["tokens"], w["tokens"]) for g, w in zip(got, want))
    # constructing with consumed_samples is the same as loading it
    direct = MicroBatchIterator(dataset, 12, 3, dp_rank=1, dp_size=2, consumed_samples=36)
    assert sample_ids(direct.next_global_batch()) == sample_ids(expected[0])


def test_invalid_sizes_are_one_line_errors():
    dataset = CountingDataset(10)
    message = r"global batch size 10: must be a positive multiple of micro_batch_size \* dp_size"
    with pytest.raises(DataError, match=message + r" = 2 \* 4"):
        MicroBatchIterator(dataset, 10, 2, 0, 4)
    with pytest.raises(DataError, match="rank 2 of 2"):
        MicroBatchIterator(dataset, 8, 2, 2, 2)
    with pytest.raises(DataError, match="micro batch size 0"):
        MicroBatchIterator(dataset, 8, 0, 0, 1)
    with pytest.raises(DataError, match="dataset is empty"):
        MicroBatchIterator(CountingDataset(0), 8, 2, 0, 1)
    with pytest.raises(DataError, match="consumed_samples"):
        MicroBatchIterator(dataset, 8, 2, 0, 1).load_state_dict({})
