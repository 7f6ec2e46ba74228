"""Document masking (issue 15, defect 8): a packed micro-batch with document-causal attention and
position ids restarting per document gives every document the logits it gets alone."""

import pytest
import torch

from aria_train.data.documents import positions_within_documents
from aria_train.model.attention import DocumentMask
from aria_train.model.config import ModelConfig
from aria_train.model.decoder import build_model
from aria_train.moe.config import MoEConfig

TOL = 1e-5
LENGTHS = [[5, 9, 3, 7], [11, 1, 12]]  # two rows of 24 tokens, documents of these lengths


def _model(mode="none"):
    moe = MoEConfig(num_experts=8, top_k=2, expert_ffn_size=16, balance_group_size=4)
    cfg = ModelConfig(vocab_size=96, hidden_size=32, num_layers=2, num_heads=4, head_dim=8, moe=moe,
                      activation_checkpointing=mode)
    return build_model(cfg, seed=3)


def _packed_batch():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 96, (len(LENGTHS), sum(LENGTHS[0])), generator=gen)
    document_ids = torch.stack([torch.repeat_interleave(torch.arange(len(row)), torch.tensor(row)) for row in LENGTHS])
    return tokens, document_ids


@pytest.mark.parametrize("mode", ["none", "full", "selective"])
def test_packed_documents_equal_documents_run_one_by_one(mode):
    model = _model(mode).train()  # train(): the checkpointing modes are active
    tokens, document_ids = _packed_batch()
    mask = DocumentMask.from_document_ids(document_ids)
    with torch.no_grad():
        packed = model.logits(model(tokens, position_ids=positions_within_documents(document_ids),
                                    document_mask=mask).hidden)
        worst = 0.0
        for row, lengths in enumerate(LENGTHS):
            start = 0
            for n in lengths:
                alone = model.logits(model(tokens[row : row + 1, start : start + n]).hidden)[0]
                worst = max(worst, float((packed[row, start : start + n] - alone).abs().max()))
                start += n
    print(f"max |packed - one by one| logit difference ({mode}): {worst:.2e}")
    assert worst < TOL


def test_without_the_mask_documents_read_each_other():
    """The check can fail: plain causal attention over the same packed batch differs."""
    model = _model().eval()
    tokens, document_ids = _packed_batch()
    positions = positions_within_documents(document_ids)
    with torch.no_grad():
        masked = model.logits(model(tokens, positions, document_mask=DocumentMask.from_document_ids(document_ids)).hidden)
        plain = model.logits(model(tokens, positions).hidden)
    assert float((masked[0, 5:] - plain[0, 5:]).abs().max()) > 1e-2  # every later document changes
    assert torch.allclose(masked[0, :5], plain[0, :5], atol=TOL)  # the first has nothing before it


def test_gradients_of_packed_documents_equal_the_sum_over_documents():
    model, ref = _model().train(), _model().train()
    tokens, document_ids = _packed_batch()
    out = model(tokens, positions_within_documents(document_ids),
                document_mask=DocumentMask.from_document_ids(document_ids))
    model.logits(out.hidden).float().logsumexp(-1).sum().backward()
    for row, lengths in enumerate(LENGTHS):
        start = 0
        for n in lengths:
            ref.logits(ref(tokens[row : row + 1, start : start + n]).hidden).float().logsumexp(-1).sum().backward()
            start += n
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        if "router" in name:  # router gradients come from the balance losses, which see the whole batch
            continue
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_document_mask_offsets():
    _, document_ids = _packed_batch()
    mask = DocumentMask.from_document_ids(document_ids)
    assert mask.cu_seqlens.tolist() == [0, 5, 14, 17, 24, 35, 36, 48]
    assert mask.cu_seqlens.dtype == torch.int32 and mask.max_seqlen == 12
