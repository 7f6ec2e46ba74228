"""Document boundaries of packed language batches (issue 15, defect 8), against megatron-core's
own reset_position_ids / reset_attention_mask (`_get_ltor_masks_and_position_ids`)."""

import pytest
import torch

from aria_train.data.batches import MicroBatchIterator
from aria_train.data.documents import document_ids_after_eod, positions_within_documents
from aria_train.data.errors import DataError
from aria_train.data.megatron_import import import_megatron
from aria_train.model.attention import DocumentMask
from aria_train.train.run_config import build_config

EOD = 2


def _rows():
    gen = torch.Generator().manual_seed(4)
    rows = torch.randint(3, 50, (3, 40), generator=gen)
    rows[0, [6, 7, 20, 39]] = EOD  # two eods in a row, one at the end
    rows[1, 0] = EOD  # an eod first
    return rows  # row 2: no eod at all


def test_positions_and_mask_match_megatron():
    gpt = import_megatron("megatron.core.datasets.gpt_dataset")
    rows = _rows()
    documents = document_ids_after_eod(rows, EOD)
    dense = DocumentMask.from_document_ids(documents).dense()
    for b, row in enumerate(rows):
        masked, _, positions = gpt._get_ltor_masks_and_position_ids(row, EOD, True, True, False, True)
        assert torch.equal(positions_within_documents(documents)[b], positions)
        assert torch.equal(dense[b, 0], ~masked[0])  # megatron: True = masked out


def test_language_micro_batches_carry_documents_when_asked():
    rows = _rows()
    dataset = [{"tokens": r, "labels": r, "loss_mask": torch.ones(40), "position_ids": torch.arange(40)} for r in rows]
    plain = MicroBatchIterator(dataset, 3, 3, 0, 1, eod=EOD).next_global_batch()[0]
    assert "document_ids" not in plain and torch.equal(plain["position_ids"][0], torch.arange(40))
    batch = MicroBatchIterator(dataset, 3, 3, 0, 1, eod=EOD, reset_position_ids=True,
                               reset_attention_mask=True).next_global_batch()[0]
    assert batch["document_ids"][0, :8].tolist() == [0, 0, 0, 0, 0, 0, 0, 1]
    assert batch["document_ids"][0, 8].item() == 2 and batch["position_ids"][0, 8].item() == 0
    assert torch.equal(batch["position_ids"], positions_within_documents(batch["document_ids"]))
    with pytest.raises(DataError, match="end-of-document"):
        MicroBatchIterator(dataset, 3, 3, 0, 1, reset_attention_mask=True)


def test_stage4_masks_documents_by_default_and_language_stages_do_not():
    for stage in (1, 2, 3):
        data = build_config(stage).data
        assert not data.reset_attention_mask and not data.reset_position_ids
    data = build_config(4).data
    assert data.reset_attention_mask and data.reset_position_ids
