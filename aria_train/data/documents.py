"""Document boundaries inside packed sequences (`data.reset_attention_mask`,
`data.reset_position_ids`), as Megatron-LM defines them: a document ends with its end-of-document
token, and the next token starts a new one.

Each micro-batch then carries `document_ids` [B, S] (the document index of every token, counted
from 0 in each row), which the model turns into document-causal attention
(aria_train.model.attention.DocumentMask), and, with reset_position_ids, position ids that restart
at 0 at every document start (RoPE then sees each document as if it were alone).
"""

from __future__ import annotations

import torch


def document_ids_after_eod(tokens: torch.Tensor, eod: int) -> torch.Tensor:
    """tokens [B, S] -> [B, S] int64: the number of eod tokens strictly before each position (the
    eod token itself belongs to the document it ends)."""
    ends = (tokens == eod).long()
    return torch.cumsum(ends, dim=1) - ends


def positions_within_documents(document_ids: torch.Tensor) -> torch.Tensor:
    """document_ids [B, S] (documents contiguous) -> [B, S] int64 positions restarting at 0 at
    every document start."""
    seq = document_ids.shape[1]
    index = torch.arange(seq, dtype=torch.long).expand_as(document_ids)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    first = torch.cummax(torch.where(starts, index, torch.zeros_like(index)), dim=1).values
    return index - first


def add_document_fields(batch: dict, document_ids: torch.Tensor, reset_position_ids: bool,
                        reset_attention_mask: bool) -> dict:
    """Puts the configured fields into a micro-batch dict (in place) and returns it."""
    if reset_attention_mask:
        batch["document_ids"] = document_ids
    if reset_position_ids:
        batch["position_ids"] = positions_within_documents(document_ids)
    return batch
