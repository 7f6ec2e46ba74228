"""Document boundaries of packed multimodal batches (issue 15, defect 8): every packed piece (text
document, sample, padding) starts a document, and so does every token after an eod."""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_mm_mixture import make_mixture  # noqa: E402

from aria_train.data.documents import positions_within_documents  # noqa: E402
from aria_train.data.multimodal import MultimodalMicroBatchIterator  # noqa: E402


def _pieces(seq, S):
    """Start slots of the pieces the packer placed, from its own record (texts are the gaps)."""
    starts = {0} | {p.offset for p in seq.placed} | {p.offset + p.length for p in seq.placed if p.offset + p.length < S}
    return starts


def test_documents_start_at_every_piece_and_after_every_eod(tok, renderer, syn_dir):
    it = MultimodalMicroBatchIterator(make_mixture(tok, renderer, syn_dir, seq_length=64), 4, 2, 0, 1,
                                      reset_position_ids=True, reset_attention_mask=True)
    mixture = it.mixture
    seen_images = seen_eod = 0
    for _ in range(3):
        start_seq = mixture._sequences
        for batch in it.next_global_batch():
            documents, positions = batch["document_ids"], batch["position_ids"]
            assert torch.equal(positions, positions_within_documents(documents))
            tokens = batch["tokens"]
            for row in range(tokens.shape[0]):
                starts = set((np.flatnonzero(np.diff(documents[row].numpy())) + 1).tolist()) | {0}
                eod_after = {int(i) + 1 for i in torch.nonzero(tokens[row, :-1] == tok.eod).reshape(-1)}
                assert eod_after <= starts  # a new document after every eod
                seen_eod += len(eod_after)
                image_slots = torch.nonzero(tokens[row] == tok.fim_prefix).reshape(-1).tolist()
                for slot in image_slots:  # an image block never straddles a boundary
                    end = slot
                    while tokens[row, end + 1] == tok.img:
                        end += 1
                    assert documents[row, slot] == documents[row, end + 1]
                seen_images += len(image_slots)
        assert mixture._sequences == start_seq + 4
    assert seen_images > 0 and seen_eod > 0


def test_packer_records_where_pieces_start(tok, renderer, syn_dir):
    mixture = make_mixture(tok, renderer, syn_dir, seq_length=64)
    for _ in range(6):
        seq = mixture.next_sequence(materialize=False)
        S = len(seq.tokens) - 1
        recorded = set(np.flatnonzero(seq.starts[:S]).tolist())
        assert _pieces(seq, S) <= recorded  # samples start, and what follows a sample starts
        assert 0 in recorded
