"""A user-supplied embedder for the pluggable-embedding test: token histograms folded to dim."""

import numpy as np


class HistogramEmbedder:
    name = "histogram"

    def __init__(self, dim: int):
        self.dim = dim
        self.calls = 0

    def __call__(self, docs):
        self.calls += 1
        out = np.zeros((len(docs), self.dim), dtype=np.float32)
        for row, tokens in enumerate(docs):
            np.add.at(out[row], np.asarray(tokens, dtype=np.int64) % self.dim, 1.0)
        return out


def factory(tokenizer, dim):
    return HistogramEmbedder(dim)
