import pytest
import torch

from aria_train.train.loss import chunked_cross_entropy_sum, full_cross_entropy_sum


def test_chunked_loss_matches_full_logits_values_and_gradients():
    torch.manual_seed(0)
    tokens, hidden_size, vocab = 37, 16, 50
    hidden = torch.randn(tokens, hidden_size, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(vocab, hidden_size, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, vocab, (tokens,))
    mask = (torch.rand(tokens) > 0.3).double()

    full = full_cross_entropy_sum(hidden, weight, labels, mask)
    full_grads = torch.autograd.grad(full, (hidden, weight))
    chunked = chunked_cross_entropy_sum(hidden, weight, labels, mask, chunk_tokens=8)
    chunked_grads = torch.autograd.grad(chunked, (hidden, weight))

    assert torch.allclose(chunked, full, rtol=1e-6, atol=0)
    for a, b in zip(chunked_grads, full_grads):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-12)


def test_masked_tokens_carry_no_loss():
    hidden = torch.randn(4, 8)
    weight = torch.randn(10, 8)
    labels = torch.tensor([1, 2, 3, 4])
    only_first = chunked_cross_entropy_sum(hidden, weight, labels, torch.tensor([1.0, 0, 0, 0]), chunk_tokens=2)
    expected = torch.nn.functional.cross_entropy(hidden[:1] @ weight.T, labels[:1], reduction="sum")
    assert torch.allclose(only_first, expected)


def _count_chunk_forwards(tokens: int, chunk_tokens: int) -> int:
    """How many times an LM head product (a matrix product with `vocab` output columns) runs in
    one forward + backward, counted at the aten level, whatever the loss's code calls."""
    from torch.utils._python_dispatch import TorchDispatchMode

    vocab, products = 20, {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}
    calls = []

    class CountLogits(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in products and out.shape[-1] == vocab:
                calls.append(out.shape)
            return out

    hidden = torch.randn(tokens, 8, requires_grad=True)
    weight = torch.randn(vocab, 8, requires_grad=True)
    labels = torch.randint(0, vocab, (tokens,))
    with CountLogits():
        chunked_cross_entropy_sum(hidden, weight, labels, torch.ones(tokens), chunk_tokens=chunk_tokens).backward()
    return len(calls)


def test_no_chunk_is_recomputed():
    """Issue 15, defect 7: the LM head runs once per chunk in forward + backward (the gradients are
    computed with the loss); before, every chunk was checkpointed and ran twice, even a single one."""
    assert _count_chunk_forwards(tokens=16, chunk_tokens=16) == 1
    assert _count_chunk_forwards(tokens=16, chunk_tokens=64) == 1
    assert _count_chunk_forwards(tokens=16, chunk_tokens=8) == 2


@pytest.mark.parametrize("chunk", [5, 64])
def test_fused_gradients_equal_autograd_of_the_full_loss_under_bf16_autocast(chunk):
    torch.manual_seed(1)
    hidden = torch.randn(23, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=True)
    labels = torch.randint(0, 40, (23,))
    mask = (torch.rand(23) > 0.2).float()
    results = []
    for fn in (lambda: chunked_cross_entropy_sum(hidden, weight, labels, mask, chunk_tokens=chunk),
               lambda: full_cross_entropy_sum(hidden, weight, labels, mask)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = fn()
        results.append((loss.detach(), *torch.autograd.grad(loss * 0.5, (hidden, weight))))
    (loss, gh, gw), (ref_loss, ref_gh, ref_gw) = results
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert gh.dtype == hidden.dtype and gw.dtype == weight.dtype
    torch.testing.assert_close(gh, ref_gh, rtol=2e-2, atol=2e-3)  # bf16 products on both sides
    torch.testing.assert_close(gw, ref_gw, rtol=2e-2, atol=2e-3)


def test_without_gradients_nothing_is_kept():
    hidden, weight = torch.randn(10, 8), torch.randn(12, 8)
    labels = torch.randint(0, 12, (10,))
    loss = chunked_cross_entropy_sum(hidden, weight, labels, torch.ones(10), chunk_tokens=4)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, full_cross_entropy_sum(hidden, weight, labels, torch.ones(10)))
