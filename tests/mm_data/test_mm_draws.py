"""The mixture's source choices computed in blocks are numpy's default_rng([seed, j]).random(),
bit for bit, so the stream is the one a generator per draw gives."""

import numpy as np
import pytest

from aria_train.data.multimodal.draws import SourceChoices, uniforms


@pytest.mark.parametrize("seed, start, count", [
    (0, 0, 2000), (1234, 77, 700), (11, 10**9, 300),
    (2**32 + 5, 0, 200),  # a seed of two words
    (7, 2**32 - 40, 100),  # a block across 2**32: draws gain a second word
    (2**40, 2**33, 50), (2**63, 3, 30),
])
def test_uniforms_are_numpys(seed, start, count):
    expected = [np.random.default_rng([seed, j]).random() for j in range(start, start + count)]
    assert uniforms(seed, start, count).tolist() == expected


def test_source_choices_match_the_per_draw_rule():
    cumulative = np.cumsum([0.2, 0.5, 0.3])
    choices = SourceChoices(5, cumulative, block=64)
    for j in list(range(0, 300)) + [5, 1000, 3]:  # any order: blocks are recomputed as needed
        u = np.random.default_rng([5, j]).random()
        assert choices(j) == min(int(np.searchsorted(cumulative, u, side="right")), 2)
