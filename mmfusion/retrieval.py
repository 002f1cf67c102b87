"""Nearest-neighbour search over L2-normalised embeddings, and the kNN score RGCL classifies with.

One home for retrieval's arithmetic, shared by training (RGCL's hard-negative mining) and inference (a checkpoint's
labelled memory). Remote code: copied beside checkpoints, so it needs only torch and numpy; FAISS is used when it
is installed (`pip install faiss-cpu`), and exact search falls back to a batched matrix product without it.

Similarities are inner products of L2-normalised vectors, i.e. cosine similarities in [-1, 1].
"""

from __future__ import annotations

import numpy as np
import torch

try:  # optional: exact search is also a batched matmul; FAISS adds speed and approximate indexes
    import faiss
except ImportError:  # pragma: no cover - depends on the environment
    faiss = None

# Queries are compared with the stored vectors this many at a time (bounds the similarity matrix's memory).
QUERY_BATCH = 1024


class VectorIndex:
    """Exact inner-product search over `vectors` (float32, shape `(n, dim)`, rows L2-normalised).

    `search(queries, k)` returns `(similarities, positions)`, both `(num_queries, k)`, best first; where fewer than
    `k` vectors exist the missing slots hold similarity `-inf` and position `-1` (FAISS's convention).
    """

    def __init__(self, vectors: np.ndarray | torch.Tensor, use_faiss: bool | None = None):
        vectors = _as_float32(vectors)
        if vectors.ndim != 2:
            raise ValueError(f"An index holds a 2-D array of vectors (n, dim); got shape {vectors.shape}.")
        self.vectors = vectors
        self.use_faiss = faiss is not None if use_faiss is None else use_faiss
        if self.use_faiss and faiss is None:
            raise ImportError("use_faiss=True needs FAISS: pip install faiss-cpu")
        self._faiss_index = None
        if self.use_faiss:
            self._faiss_index = faiss.IndexFlatIP(vectors.shape[1])
            if len(vectors):
                self._faiss_index.add(np.ascontiguousarray(vectors))

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def search(self, queries: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = _as_float32(queries)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"Queries must have shape (n, {self.dim}); got {queries.shape}.")
        if k < 1:
            raise ValueError(f"k must be at least 1; got {k}.")
        found = min(k, len(self))
        similarities = np.full((len(queries), k), -np.inf, dtype=np.float32)
        positions = np.full((len(queries), k), -1, dtype=np.int64)
        if found == 0 or len(queries) == 0:
            return similarities, positions
        if self._faiss_index is not None:
            scores, ids = self._faiss_index.search(np.ascontiguousarray(queries), found)
            similarities[:, :found], positions[:, :found] = scores, ids
            return similarities, positions
        stored = torch.from_numpy(self.vectors)
        for start in range(0, len(queries), QUERY_BATCH):
            batch = torch.from_numpy(queries[start : start + QUERY_BATCH])
            top = torch.topk(batch @ stored.T, found, dim=1)  # sorted, best first
            similarities[start : start + len(batch), :found] = top.values.numpy()
            positions[start : start + len(batch), :found] = top.indices.numpy()
        return similarities, positions


def knn_scores(similarities: np.ndarray, neighbour_labels: np.ndarray, num_labels: int) -> np.ndarray:
    """RGCL's kNN classifier: per class c, `sum_k w_k s_k sim_k / sum_k w_k` with `s_k = +1` where neighbour k has
    class c and `-1` where it has not, and rank weights `w_k = K + 1 - k` (the nearest counts most).

    similarities: `(n, K)`, best first (missing neighbours: position `-1` in `neighbour_labels` or `-inf` here).
    neighbour_labels: `(n, K)` class ids (single-label) or `(n, K, num_labels)` 0/1 targets (multi-label).
    Returns `(n, num_labels)` scores in [-1, 1]; for two classes column 1 is RGCL's hateful score.
    A query with no neighbour scores 0 everywhere.
    """
    similarities = np.asarray(similarities, dtype=np.float64)
    neighbour_labels = np.asarray(neighbour_labels)
    n, k = similarities.shape
    if neighbour_labels.ndim == 2:
        present = (neighbour_labels >= 0) & np.isfinite(similarities)
        classes = np.arange(num_labels)
        member = neighbour_labels[:, :, None] == classes[None, None, :]  # (n, K, C)
    else:
        present = np.isfinite(similarities) & (neighbour_labels.min(axis=-1) >= 0)
        member = neighbour_labels > 0.5
    weights = np.where(present, (k + 1 - np.arange(1, k + 1))[None, :], 0.0)  # (n, K)
    signs = np.where(member, 1.0, -1.0)
    sims = np.where(present, similarities, 0.0)
    totals = (weights[:, :, None] * signs * sims[:, :, None]).sum(axis=1)
    norm = weights.sum(axis=1, keepdims=True)
    return np.divide(totals, norm, out=np.zeros_like(totals), where=norm > 0).astype(np.float32)


def _as_float32(vectors) -> np.ndarray:
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(vectors, dtype=np.float32)


__all__ = ["VectorIndex", "knn_scores"]
