"""data.mix_by=tokens: the mixture weights are token shares, so a source of long documents and one
of short samples deliver the weights' tokens (by samples they deliver the weights' draws), and
a resumed stream continues exactly."""

import numpy as np
import pytest

from aria_train.data.errors import DataError
from aria_train.data.multimodal import LanguageSource, MultimodalMixture, ShardSource


def _docs(length, count, start):
    return [np.append(np.arange(start + i, start + i + length - 1) % 700 + 300, 2) for i in range(count)]


def _mixture(renderer, syn_dir, mix_by, weights=(0.25, 0.75)):
    long_docs = LanguageSource(_docs(200, 50, 0), name="long")  # 200 tokens per draw
    short_docs = LanguageSource(_docs(10, 50, 1), name="short")  # 10 tokens per draw
    images = ShardSource(syn_dir, seed=3)
    sources = [(weights[0], long_docs), (weights[1] / 2, short_docs), (weights[1] / 2, images)]
    return MultimodalMixture(sources, 64, 5, renderer=renderer, mix_by=mix_by)


def _token_shares(mix, sequences):
    for _ in range(sequences):
        mix.next_sequence(materialize=False)
    tokens = np.asarray(mix.state_dict()["tokens"], dtype=float)
    return tokens / tokens.sum()


def test_token_shares_follow_the_weights(renderer, syn_dir):
    shares = _token_shares(_mixture(renderer, syn_dir, "tokens"), 150)
    print(f"mix_by=tokens shares {np.round(shares, 3)}")
    assert np.allclose(shares, [0.25, 0.375, 0.375], atol=0.02)
    by_samples = _mixture(renderer, syn_dir, "samples")
    shares = _token_shares(by_samples, 150)
    print(f"mix_by=samples shares {np.round(shares, 3)}")
    assert shares[0] > 0.6  # the long documents swamp the short ones when draws are weighted
    draws = np.asarray(by_samples.stats["docs"], dtype=float)
    assert np.allclose(draws / draws.sum(), [0.25, 0.375, 0.375], atol=0.05)


def test_resume_continues_the_same_stream(renderer, syn_dir):
    run = _mixture(renderer, syn_dir, "tokens")
    for _ in range(30):
        run.next_sequence(materialize=False)
    state = run.state_dict()
    expected = [run.next_sequence(materialize=False).tokens for _ in range(20)]
    resumed = _mixture(renderer, syn_dir, "tokens")
    resumed.load_state_dict(state)
    assert all(np.array_equal(a, resumed.next_sequence(materialize=False).tokens) for a in expected)
    replayed = _mixture(renderer, syn_dir, "tokens")  # from the sequence count alone
    replayed.skip(30)
    assert all(np.array_equal(a, replayed.next_sequence(materialize=False).tokens) for a in expected)


def test_unknown_mix_by_is_refused(renderer, syn_dir):
    with pytest.raises(DataError, match="mix_by='words'"):
        _mixture(renderer, syn_dir, "words")
