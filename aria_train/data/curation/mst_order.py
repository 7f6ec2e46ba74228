"""A document order in which similar documents sit side by side: kNN graph (faiss) -> minimum
spanning tree (scipy) -> depth-first walk, made out of core by coarse bucketing first.

order_documents(vectors) returns a permutation of the documents:
- a set of at most `leaf_size` documents: exact kNN (faiss IndexFlatIP on L2-normalised vectors,
  so inner product = cosine), edge weight 1 - cosine, scipy's minimum_spanning_tree (Kruskal),
  then a depth-first preorder walk of the tree (scipy depth_first_order from a leaf of each
  component). A preorder walk lists a whole subtree before leaving it, so the neighbours of the
  order are tree neighbours or siblings: similar documents;
- a larger set: faiss k-means (trained on a sample) splits it into min(ceil(n / leaf_size),
  max_fanout) buckets, assigned in chunks (the fan-out cap keeps each level's assignment cost at
  n x max_fanout x dim: 10^9 documents take 3 levels of 256); the buckets are ordered by the same MST walk over their centroids (so
  neighbouring buckets are similar too), and each bucket is ordered recursively. Only one
  bucket's vectors are in memory at a time (the vectors may be a memory-mapped file), and
  buckets are independent, so on a cluster they shard over nodes.
`timings` collects seconds per phase: kmeans, knn, mst, traversal.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

_ASSIGN_CHUNK = 65536
_SAMPLE_PER_CENTROID = 64
MAX_FANOUT = 256


def order_documents(vectors: np.ndarray, k: int = 10, leaf_size: int = 10000, seed: int = 0,
                    timings: dict | None = None) -> np.ndarray:
    """A permutation of range(len(vectors)) that keeps similar documents adjacent."""
    timings = timings if timings is not None else defaultdict(float)
    ids = np.arange(len(vectors), dtype=np.int64)
    return _order(vectors, ids, k, max(leaf_size, 2), seed, timings)


def _order(vectors, ids: np.ndarray, k: int, leaf_size: int, seed: int, timings) -> np.ndarray:
    if len(ids) <= leaf_size:
        return ids[mst_walk(np.ascontiguousarray(vectors[ids], dtype=np.float32), k, timings)]
    parts = min(-(-len(ids) // leaf_size), MAX_FANOUT)
    centroids, assignment = _kmeans(vectors, ids, parts, seed, timings)
    members = np.argsort(assignment, kind="stable")
    starts = np.searchsorted(assignment[members], np.arange(parts + 1))
    walk = mst_walk(centroids, k, timings)
    pieces = []
    for part in walk:
        bucket = ids[members[starts[part]:starts[part + 1]]]
        if len(bucket) == len(ids):  # k-means found no structure (identical vectors): cut evenly
            return np.concatenate([_order(vectors, chunk, k, leaf_size, seed + 1, timings)
                                   for chunk in np.array_split(ids, parts)])
        if len(bucket):
            pieces.append(_order(vectors, bucket, k, leaf_size, seed + 1, timings))
    return np.concatenate(pieces)


def _kmeans(vectors, ids: np.ndarray, parts: int, seed: int, timings) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    sample_size = min(len(ids), parts * _SAMPLE_PER_CENTROID)
    sample = np.sort(rng.choice(ids, size=sample_size, replace=False))
    train = np.ascontiguousarray(vectors[sample], dtype=np.float32)
    kmeans = faiss.Kmeans(train.shape[1], parts, niter=10, seed=seed, spherical=True,
                          max_points_per_centroid=_SAMPLE_PER_CENTROID, min_points_per_centroid=1)
    kmeans.train(train)
    assignment = np.empty(len(ids), dtype=np.int64)
    for begin in range(0, len(ids), _ASSIGN_CHUNK):
        chunk = np.ascontiguousarray(vectors[ids[begin:begin + _ASSIGN_CHUNK]], dtype=np.float32)
        assignment[begin:begin + len(chunk)] = kmeans.index.search(chunk, 1)[1][:, 0]
    timings["kmeans"] += time.perf_counter() - started
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32), assignment


def mst_walk(x: np.ndarray, k: int, timings) -> np.ndarray:
    """Depth-first preorder of the minimum spanning forest of x's kNN graph: a permutation."""
    import faiss
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components, depth_first_order, minimum_spanning_tree

    n = len(x)
    if n <= 2:
        return np.arange(n)
    started = time.perf_counter()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    similarity, neighbours = index.search(x, min(k + 1, n))
    timings["knn"] += time.perf_counter() - started

    started = time.perf_counter()
    rows = np.repeat(np.arange(n), neighbours.shape[1])
    cols = neighbours.ravel()
    # 1 - cosine, kept > 0: scipy reads a zero weight as "no edge"
    weights = np.clip(1.0 - similarity.ravel().astype(np.float64), 0.0, 2.0) + 1e-9
    valid = (cols >= 0) & (cols != rows)
    low, high = np.minimum(rows, cols)[valid], np.maximum(rows, cols)[valid]
    keys, first = np.unique(low * n + high, return_index=True)  # each undirected edge once
    graph = coo_matrix((weights[valid][first], (keys // n, keys % n)), shape=(n, n)).tocsr()
    tree = minimum_spanning_tree(graph)
    tree = tree + tree.T
    timings["mst"] += time.perf_counter() - started

    started = time.perf_counter()
    _, labels = connected_components(tree, directed=False)
    degree = np.diff(tree.indptr)
    visited = np.zeros(n, dtype=bool)
    order = []
    for component in np.unique(labels):  # components in order of their lowest document
        members = np.flatnonzero(labels == component)
        leaves = members[degree[members] <= 1]
        root = int(leaves[0] if len(leaves) else members[0])
        walk = depth_first_order(tree, root, directed=False, return_predecessors=False)
        order.append(walk)
        visited[walk] = True
    timings["traversal"] += time.perf_counter() - started
    result = np.concatenate(order)
    assert visited.all() and len(result) == n, "MST walk must visit every document once"
    return result
