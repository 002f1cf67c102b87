#!/usr/bin/env python
"""Search at scale: build and query time, memory and recall of `mmfusion.retrieval.VectorIndex`.

    OMP_NUM_THREADS=2 python benchmarks/bench_retrieval.py [--sizes 10000 100000 1000000] [--queries 1000]
        [--dim 768] [--k 20] [--json benchmarks/results/retrieval.json]

For each size n: n random L2-normalised float32 vectors of `dim` dimensions, written to a `.npy` file and opened as a
memory map (what a checkpoint's `memory.safetensors` is at load), then searched three ways:

- `exact, memory map`: the batched matrix product over the memory map, `STORED_CHUNK` rows at a time (never all in
  memory; what a loaded memory below the approximate threshold uses when FAISS is not installed);
- `exact, FAISS flat`: the vectors copied into `faiss.IndexFlatIP` (what a memory built in memory uses);
- `approximate, FAISS IVF`: `faiss.IndexIVFFlat` with about sqrt(n) clusters, searching 32 of them (the default above
  `APPROXIMATE_THRESHOLD` rows).

Queries (`--queries`, searched in one batched call) are of two kinds, half each: fresh random vectors (the hardest
case: in 768 dimensions every stored vector is about equally far) and near-duplicates (a stored vector plus noise,
cosine about 0.9 to it: a re-posted meme). Recall@k of the approximate index is the share of the exact top k it
finds, per kind. Memory is the process's resident set size growth while building (psutil), on top of the page cache.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mmfusion.retrieval as retrieval  # noqa: E402
from mmfusion.retrieval import VectorIndex  # noqa: E402


def cpu_features() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return "unknown"
    return " ".join(sorted({f for f in flags if f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")}))


def random_vectors(path: Path, n: int, dim: int, seed: int) -> np.ndarray:
    """n random unit vectors written to `path` a chunk at a time; returned as a read-only memory map."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for start in range(0, n, 65536):
        chunk = rng.standard_normal((min(65536, n - start), dim), dtype=np.float32)
        out[start : start + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def queries_for(vectors: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    fresh = rng.standard_normal((count // 2, vectors.shape[1]), dtype=np.float32)
    rows = np.sort(rng.choice(len(vectors), count - count // 2, replace=False))
    noise = rng.standard_normal((len(rows), vectors.shape[1]), dtype=np.float32)
    near = np.asarray(vectors[rows]) + 0.5 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    normalise = lambda q: (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return normalise(fresh), normalise(near)


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def measure(name: str, make, queries: np.ndarray, k: int) -> tuple[dict, np.ndarray]:
    gc.collect()
    before = rss_mb()
    started = time.perf_counter()
    index = make()
    index.search(queries[:1], k)  # builds the index (lazily, on the first search)
    build = time.perf_counter() - started
    grown = rss_mb() - before
    started = time.perf_counter()
    _, positions = index.search(queries, k)
    query = time.perf_counter() - started
    figures = {
        "index": name,
        "build_s": round(build, 3),
        "query_s": round(query, 3),
        "query_ms_per_query": round(1000 * query / len(queries), 3),
        "rss_growth_mb": round(grown, 1),
    }
    del index
    gc.collect()
    return figures, positions


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)]))


def run(sizes, num_queries: int, dim: int, k: int, seed: int = 0) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for n in sizes:
            path = Path(folder) / f"vectors_{n}.npy"
            vectors = random_vectors(path, n, dim, seed)
            fresh, near = queries_for(vectors, num_queries, seed)
            queries = np.concatenate([fresh, near])
            rows = []
            exact_map, truth = measure(
                "exact, memory map", lambda v=vectors: VectorIndex(v, use_faiss=False), queries, k
            )
            rows.append(exact_map)
            if retrieval.faiss is not None:
                flat, flat_found = measure(
                    "exact, FAISS flat", lambda v=vectors: VectorIndex(np.asarray(v), use_faiss=True), queries, k
                )
                flat["recall_vs_exact"] = recall(flat_found, truth)
                rows.append(flat)
                ivf, found = measure("approximate, FAISS IVF", lambda v=vectors: VectorIndex(v, approximate=True),
                                     queries, k)  # fmt: skip
                half = len(fresh)
                ivf[f"recall@{k}_random_queries"] = round(recall(found[:half], truth[:half]), 4)
                ivf[f"recall@{k}_near_duplicates"] = round(recall(found[half:], truth[half:]), 4)
                ivf["near_duplicate_found_first"] = round(float(np.mean(found[half:, 0] == truth[half:, 0])), 4)
                ivf["nlist"], ivf["nprobe"] = int(np.clip(round(np.sqrt(n)), 1, 65536)), 32
                rows.append(ivf)
            for row in rows:
                row.update(n=n, dim=dim, queries=len(queries), k=k)
                print(json.dumps(row), flush=True)
            results += rows
            del vectors
            path.unlink()
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    print(f"CPU features: {cpu_features()}; threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; "
          f"FAISS {getattr(retrieval.faiss, '__version__', 'not installed')}", flush=True)  # fmt: skip
    results = run(args.sizes, args.queries, args.dim, args.k)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"cpu_features": cpu_features(), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
