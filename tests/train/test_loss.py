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


def _count_chunk_forwards(monkeypatch, tokens: int, chunk_tokens: int) -> int:
    """How many times the LM head + cross-entropy of a chunk runs in one forward + backward."""
    from aria_train.train import loss as loss_module

    calls = []
    real = loss_module._chunk_loss

    def counting(*args):
        calls.append(args[0].shape[0])
        return real(*args)

    monkeypatch.setattr(loss_module, "_chunk_loss", counting)
    hidden = torch.randn(tokens, 8, requires_grad=True)
    weight = torch.randn(20, 8, requires_grad=True)
    labels = torch.randint(0, 20, (tokens,))
    chunked_cross_entropy_sum(hidden, weight, labels, torch.ones(tokens), chunk_tokens=chunk_tokens).backward()
    return len(calls)


def test_one_chunk_is_not_recomputed(monkeypatch):
    """Issue 15, defect 7: when all tokens fit one chunk the LM head runs once (recomputing it
    saves no memory and costs a second forward); several chunks are each recomputed in backward."""
    assert _count_chunk_forwards(monkeypatch, tokens=16, chunk_tokens=16) == 1
    assert _count_chunk_forwards(monkeypatch, tokens=16, chunk_tokens=64) == 1
    assert _count_chunk_forwards(monkeypatch, tokens=16, chunk_tokens=8) == 4  # 2 chunks x (forward + recompute)
