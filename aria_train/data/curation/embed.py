"""Cheap document embeddings for clustering: hashed token n-gram TF-IDF, projected to a few
hundred dimensions. Pluggable: any object that maps a batch of token-id arrays to float32
vectors [B, D] serves (load_embedder("module:factory")), e.g. a sentence-embedding model that
decodes the tokens first.

The default (HashedTfidf), numpy + scipy only:
  features   each token id (unigram) and each adjacent pair (bigram) hashed into 2^20 slots;
  weights    (1 + log tf) * idf, idf = log((1 + N) / (1 + df)) + 1 from a first pass over the
             corpus (fit), so pieces every document has count for little;
  projection each of the 2^20 slots adds +-its weight to one of `dim` outputs (a sparse random
             projection, i.e. the hashing trick applied twice), then rows are L2-normalised so
             that inner product = cosine similarity (what the kNN search uses).
"""

from __future__ import annotations

import importlib
from typing import Iterable

import numpy as np
import scipy.sparse as sp

from aria_train.errors import UserError

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX = np.uint64(0xBF58476D1CE4E5B9)


def _hash(values: np.ndarray, multiplier: np.uint64, bits: int) -> np.ndarray:
    """Multiplicative hashing of uint64 values to `bits` bits (uint64 arithmetic wraps)."""
    with np.errstate(over="ignore"):
        return ((values.astype(np.uint64) * multiplier) >> np.uint64(64 - bits)).astype(np.int64)


class HashedTfidf:
    name = "hashed-tfidf"

    def __init__(self, dim: int = 128, feature_bits: int = 20, seed: int = 0):
        if dim < 2 or feature_bits < 4:
            raise UserError(f"hashed-tfidf: dim {dim} must be >= 2 and feature_bits {feature_bits} >= 4")
        self.dim, self.feature_bits = dim, feature_bits
        n_features = 1 << feature_bits
        slots = np.arange(n_features, dtype=np.uint64) + np.uint64(seed) * np.uint64(n_features)
        target = _hash(slots, _MIX, 32) % dim
        sign = np.where(_hash(slots, _GOLDEN, 1) == 1, 1.0, -1.0).astype(np.float32)
        self.projection = sp.csr_matrix((sign, (np.arange(n_features), target)), shape=(n_features, dim))
        self.document_frequency = np.zeros(n_features, dtype=np.int64)
        self.documents_seen = 0

    def features(self, docs: list) -> sp.csr_matrix:
        """Term counts [B, 2^feature_bits] of the unigrams and bigrams of each token array."""
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        tokens = (np.concatenate([np.asarray(d, dtype=np.uint64) for d in docs]) if len(docs)
                  else np.zeros(0, np.uint64))
        rows = np.repeat(np.arange(len(docs), dtype=np.int64), lengths)
        inside = rows[:-1] == rows[1:]  # adjacent pairs within one document
        bigrams = tokens[:-1][inside] * np.uint64(1_000_003) + tokens[1:][inside] + np.uint64(1 << 40)
        cols = _hash(np.concatenate([tokens, bigrams]), _GOLDEN, self.feature_bits)
        rows = np.concatenate([rows, rows[:-1][inside]])
        counts = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                               shape=(len(docs), 1 << self.feature_bits))
        counts.sum_duplicates()
        return counts

    def fit(self, batches: Iterable[list]) -> None:
        """Document frequencies over the whole corpus (the first of two passes)."""
        for docs in batches:
            counts = self.features(docs)
            self.document_frequency += np.bincount(counts.indices, minlength=counts.shape[1])
            self.documents_seen += len(docs)

    def __call__(self, docs: list) -> np.ndarray:
        counts = self.features(docs)
        idf = np.log((1.0 + self.documents_seen) / (1.0 + self.document_frequency)) + 1.0
        counts.data = (1.0 + np.log(counts.data)) * idf[counts.indices].astype(np.float32)
        vectors = np.asarray((counts @ self.projection).todense(), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)


def load_embedder(spec: str, tokenizer, dim: int = 128):
    """'hashed-tfidf' (the default), or 'module:factory' where factory(tokenizer, dim) returns an
    object with __call__(list of token arrays) -> float32 [B, D] and, optionally, fit(batches)."""
    if spec in ("", HashedTfidf.name):
        return HashedTfidf(dim=dim)
    module_name, _, attribute = spec.partition(":")
    if not attribute:
        raise UserError(f"--embedder {spec!r}: expected 'hashed-tfidf' or 'module:factory'")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise UserError(f"--embedder {spec!r}: cannot load it ({err})") from None
    return factory(tokenizer, dim)


def normalized(vectors: np.ndarray, what: str) -> np.ndarray:
    """Checks an embedder's output and L2-normalises it (kNN uses inner product = cosine)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or not np.isfinite(vectors).all():
        raise UserError(f"embedder {what}: expected finite float vectors [B, D], got shape {vectors.shape}")
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
