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
