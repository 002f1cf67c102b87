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
# Stored vectors read (from a memory map) and compared this many at a time by the exact matmul search.
STORED_CHUNK = 65536
# From this many vectors on, `VectorIndex(approximate=None)` builds an approximate FAISS index (IVF) when FAISS is
# installed: below it exact search answers a batch of queries fast enough (benchmarks/RESULTS.md, retrieval).
APPROXIMATE_THRESHOLD = 500_000


class VectorIndex:
    """Inner-product search over `vectors` (float32, shape `(n, dim)`, rows L2-normalised).

    `search(queries, k)` returns `(similarities, positions)`, both `(num_queries, k)`, best first; where fewer than
    `k` vectors exist the missing slots hold similarity `-inf` and position `-1` (FAISS's convention).

    - **Exact** by default: FAISS's flat index when FAISS is installed (on every GPU FAISS sees, when it sees one),
      else a batched matrix product. Vectors given as a memory map (`np.memmap`, what `LabelledMemory.load` gives)
      are searched by the batched matrix product, `STORED_CHUNK` rows at a time, so they are never all in memory at
      once (FAISS would copy them).
    - **Approximate** (`approximate=True`, or `None` with at least `APPROXIMATE_THRESHOLD` vectors and FAISS
      installed): an inverted-file index (`faiss.IndexIVFFlat`, `nlist` clusters, default about sqrt(n), trained on a
      sample of at most 64 vectors per cluster), searching the `nprobe` nearest clusters (default 32). Recall is
      measured in `benchmarks/bench_retrieval.py`.

    The index is built on the first search, so holding one (a loaded checkpoint's memory) costs nothing until used.
    """

    def __init__(
        self,
        vectors: np.ndarray | torch.Tensor,
        use_faiss: bool | None = None,
        *,
        approximate: bool | None = False,
        nlist: int | None = None,
        nprobe: int | None = None,
        use_gpu: bool | None = None,
    ):
        if not isinstance(vectors, np.memmap):
            vectors = _as_float32(vectors)
        if vectors.ndim != 2:
            raise ValueError(f"An index holds a 2-D array of vectors (n, dim); got shape {vectors.shape}.")
        if vectors.dtype != np.float32:
            raise ValueError(f"An index holds float32 vectors; got {vectors.dtype}.")
        self.vectors = vectors
        if approximate is None:
            approximate = faiss is not None and len(vectors) >= APPROXIMATE_THRESHOLD
        if approximate and faiss is None:
            raise ImportError("An approximate index needs FAISS: pip install faiss-cpu")
        self.approximate = bool(approximate)
        mapped = isinstance(vectors, np.memmap)
        self.use_faiss = (faiss is not None and not mapped) if use_faiss is None else use_faiss
        self.use_faiss = self.use_faiss or self.approximate
        if self.use_faiss and faiss is None:
            raise ImportError("use_faiss=True needs FAISS: pip install faiss-cpu")
        self.nlist = nlist or int(np.clip(round(np.sqrt(max(len(vectors), 1))), 1, 65536))
        self.nprobe = nprobe or 32
        gpus = faiss.get_num_gpus() if faiss is not None and hasattr(faiss, "get_num_gpus") else 0
        self.use_gpu = (gpus > 0) if use_gpu is None else use_gpu
        self._faiss_index = None

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def _built_faiss_index(self):
        if self._faiss_index is not None:
            return self._faiss_index
        dim, vectors = self.dim, self.vectors
        if self.approximate:
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(
                quantizer, dim, min(self.nlist, max(len(vectors), 1)), faiss.METRIC_INNER_PRODUCT
            )
            sample = np.random.default_rng(0).choice(len(vectors), min(len(vectors), 64 * index.nlist), replace=False)
            index.train(np.ascontiguousarray(vectors[np.sort(sample)], dtype=np.float32))
            index.nprobe = min(self.nprobe, index.nlist)
        else:
            index = faiss.IndexFlatIP(dim)
        if self.use_gpu:
            index = faiss.index_cpu_to_all_gpus(index)
            if self.approximate:
                faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", min(self.nprobe, self.nlist))
        for start in range(0, len(vectors), STORED_CHUNK):  # a memory map is read a chunk at a time
            index.add(np.ascontiguousarray(vectors[start : start + STORED_CHUNK], dtype=np.float32))
        self._faiss_index = index
        return index

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
        if self.use_faiss:
            scores, ids = self._built_faiss_index().search(np.ascontiguousarray(queries), found)
            # an approximate search may find fewer than asked: FAISS marks those slots -1 (similarity unset)
            similarities[:, :found] = np.where(ids < 0, -np.inf, scores)
            positions[:, :found] = np.where(ids < 0, -1, ids)
            return similarities, positions
        for start in range(0, len(queries), QUERY_BATCH):
            batch = torch.from_numpy(queries[start : start + QUERY_BATCH])
            best_values = best_positions = None
            for offset in range(0, len(self), STORED_CHUNK):
                stored = torch.from_numpy(np.array(self.vectors[offset : offset + STORED_CHUNK], dtype=np.float32))
                top = torch.topk(batch @ stored.T, min(found, len(stored)), dim=1)  # sorted, best first
                values, indices = top.values, top.indices + offset
                if best_values is not None:  # merge with the best of the chunks before
                    values, order = torch.topk(torch.cat([best_values, values], 1), found, dim=1)
                    indices = torch.gather(torch.cat([best_positions, indices], 1), 1, order)
                best_values, best_positions = values, indices
            similarities[start : start + len(batch), :found] = best_values.numpy()
            positions[start : start + len(batch), :found] = best_positions.numpy()
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


__all__ = ["APPROXIMATE_THRESHOLD", "VectorIndex", "knn_scores"]
