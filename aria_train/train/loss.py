"""Token cross-entropy of the LM head, computed in chunks of the sequence with its gradients, and
the loss normalisation.

The [tokens x vocab] logits never exist at once (at 64K context and a 100K vocabulary they would
be 26 GB in fp32): the LM head runs on `chunk_tokens` rows at a time. When gradients are needed,
each chunk's gradients are computed right there in the forward (the fused linear cross-entropy
of Liger-Kernel and others): softmax minus one-hot, in place in the chunk's fp32 logits, then the
two matrix products that give the gradients of the chunk's hidden rows and of the LM head. Those
two are what backward returns, scaled by the incoming gradient. So:
  - nothing of size [tokens x vocab] is kept for backward, and no chunk is recomputed (the
    checkpointed alternative runs the LM head's forward twice);
  - the log-softmax, its gradient buffer and the one-hot scatter of cross_entropy's backward are
    replaced by one in-place pass over each chunk's logits (on CPU the 2048 x 32K loss of
    bench/cpu_step.py spends 180 ms fewer there);
  - kept from forward to backward: the hidden-row gradient [tokens, H] (the hidden's dtype) and
    the LM head's [V, H] (accumulated over chunks in fp32, kept in the weight's dtype).
The matrix products run in the compute dtype (bf16 under autocast), the softmax in fp32.

Normalisation: the global loss of a step is the mean over every loss-carrying token of the
global batch, plus the balance losses averaged over micro-batches and ranks. Each rank's local
loss is scaled so that the SUM over ranks and micro-batches is that global loss; gradients are
then summed across ranks (aria_train.optim.protocol).
"""

import torch
import torch.nn.functional as F


def chunked_cross_entropy_sum(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    chunk_tokens: int = 4096,
) -> torch.Tensor:
    """hidden: [N, H]; lm_head_weight: [V, H]; labels: [N]; loss_mask: [N] -> masked sum (fp32)."""
    if torch.is_grad_enabled() and (hidden.requires_grad or lm_head_weight.requires_grad):
        return LinearCrossEntropy.apply(hidden, lm_head_weight, labels, loss_mask, chunk_tokens)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_tokens):
        end = start + chunk_tokens
        total = total + _chunk_loss(hidden[start:end], lm_head_weight, labels[start:end], loss_mask[start:end])
    return total


class LinearCrossEntropy(torch.autograd.Function):
    """sum_t mask_t * CE(hidden_t @ W^T, label_t), its gradients computed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, loss_mask, chunk_tokens):
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = None
        for start in range(0, hidden.shape[0], chunk_tokens):
            rows = slice(start, start + chunk_tokens)
            loss, grad_logits = _chunk_loss_and_logit_grad(hidden[rows], weight, labels[rows], loss_mask[rows])
            total += loss.to(torch.float32)
            if need_hidden:
                grad_hidden[rows] = grad_logits @ weight.to(grad_logits.dtype)
            if need_weight:
                part = grad_logits.t() @ hidden[rows].to(grad_logits.dtype)
                grad_weight = part.to(_softmax_dtype(part.dtype)) if grad_weight is None else grad_weight.add_(part)
            del grad_logits  # before the next chunk's logits exist: one [chunk, V] at a time
        ctx.save_for_backward(grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = lambda g: None if g is None else g * grad_total.to(g.dtype)  # noqa: E731
        return scale(grad_hidden), scale(grad_weight), None, None, None


def _chunk_loss_and_logit_grad(hidden, weight, labels, loss_mask):
    """One chunk: (masked CE sum, d(sum)/d(logits) in the compute dtype). The gradient is
    softmax - one_hot(label), times the mask, computed in place in the fp32 logits."""
    logits = F.linear(hidden, weight)
    compute_dtype = logits.dtype
    logits = logits.to(_softmax_dtype(compute_dtype))
    mask = loss_mask.to(logits.dtype)
    target = labels.unsqueeze(1)
    target_logit = logits.gather(1, target).squeeze(1)
    # log-sum-exp and softmax in the logits' own memory (torch.logsumexp would allocate a
    # [chunk, V] temporary): subtract the row max, exponentiate, sum, scale
    row_max = logits.amax(dim=-1, keepdim=True)
    probs = logits.sub_(row_max).exp_()
    sums = probs.sum(dim=-1, keepdim=True)
    loss = ((row_max + sums.log()).squeeze(1) - target_logit).mul(mask).sum()
    probs.mul_(mask.unsqueeze(1) / sums)  # masked softmax ...
    probs.scatter_add_(1, target, -mask.unsqueeze(1))  # ... minus the masked one-hot
    return loss, probs.to(compute_dtype)


def _softmax_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32, or wider when the inputs are."""
    return torch.promote_types(dtype, torch.float32)


def _chunk_loss(hidden, weight, labels, loss_mask) -> torch.Tensor:
    logits = F.linear(hidden, weight)
    logits = logits.to(_softmax_dtype(logits.dtype))  # [chunk, V]
    losses = F.cross_entropy(logits, labels, reduction="none")
    return (losses * loss_mask.to(logits.dtype)).sum().to(torch.float32)


def full_cross_entropy_sum(hidden, lm_head_weight, labels, loss_mask) -> torch.Tensor:
    """The same value from full logits through autograd's own cross-entropy; a reference for
    tests and benchmarks."""
    return _chunk_loss(hidden, lm_head_weight, labels, loss_mask)
