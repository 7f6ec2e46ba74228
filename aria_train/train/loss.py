"""Token cross-entropy computed in chunks of the sequence, and the loss normalisation.

The LM head is applied to `chunk_tokens` rows at a time under activation checkpointing, so the
[tokens x vocab] logits exist for one chunk only, in forward and in backward (at 64K context and
a 100K vocabulary the full logits would be 26 GB in fp32). When every token fits one chunk there
is nothing to save by recomputing (the one chunk's logits are the peak either way), so that
chunk runs plainly: recomputing it would cost a second LM-head forward (1.4x the loss on CPU).

Normalisation: the global loss of a step is the mean over every loss-carrying token of the
global batch, plus the balance losses averaged over micro-batches and ranks. Each rank's local
loss is scaled so that the SUM over ranks and micro-batches is that global loss; gradients are
then summed across ranks (aria_train.optim.protocol).
"""

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def chunked_cross_entropy_sum(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    chunk_tokens: int = 4096,
) -> torch.Tensor:
    """hidden: [N, H]; lm_head_weight: [V, H]; labels: [N]; loss_mask: [N] -> masked sum (fp32)."""
    if hidden.shape[0] <= chunk_tokens:  # one chunk: no recompute (see the module notes)
        return _chunk_loss(hidden, lm_head_weight, labels, loss_mask)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_tokens):
        end = start + chunk_tokens
        args = (hidden[start:end], lm_head_weight, labels[start:end], loss_mask[start:end])
        if torch.is_grad_enabled() and hidden.requires_grad:
            total = total + checkpoint(_chunk_loss, *args, use_reentrant=False)
        else:
            total = total + _chunk_loss(*args)
    return total


def _chunk_loss(hidden, weight, labels, loss_mask) -> torch.Tensor:
    logits = F.linear(hidden, weight).float()  # [chunk, V]
    losses = F.cross_entropy(logits, labels, reduction="none")
    return (losses * loss_mask.float()).sum()


def full_cross_entropy_sum(hidden, lm_head_weight, labels, loss_mask) -> torch.Tensor:
    """The same value from full logits; a reference for tests and benchmarks."""
    return _chunk_loss(hidden, lm_head_weight, labels, loss_mask)
