"""A labelled memory saved with a checkpoint: the nearest labelled examples, as a prediction and as explanations.

Copied next to every checkpoint (remote code, imported by the model and the pipeline), so it imports only torch,
numpy, safetensors and its flat siblings (`retrieval.py`: the search and RGCL's kNN score; `files.py`: atomic writes).

**Files** (beside `model.safetensors`):

- `memory.safetensors`: `embeddings`, float32 `(n, dim)`, L2-normalised (`MMFusionForClassification.embed`), and
  `labels`: int64 class ids `(n,)`, or for a multi-label model 0/1 int8 rows `(n, num_labels)`.
- `memory.json`: `ids` (unique strings), `captions` and `images` (for display; `null` where unknown), `label_names`,
  `multi_label`, `rows`, the `fingerprint` of the model that embedded the rows (`model_fingerprint`) and a `write`
  token that the safetensors file's metadata repeats, so a pair of files from two different writes is refused.

The embeddings are memory-mapped at load (`np.memmap` over the safetensors file's data): a 1M x 768 memory costs
nothing until searched, and exact search reads it a chunk at a time (`retrieval.VectorIndex`).

**Prediction modes** (`config.prediction_mode`, chosen on the validation split by train.py and recorded in the
config with the figures it was chosen on, `config.memory_selection`):

- `head`: the classifier's probabilities (temperature applied), as without a memory.
- `knn`: RGCL's kNN score over the `knn_k` nearest memory rows (`retrieval.knn_scores`: per class, the rank-weighted
  mean of `+sim` for neighbours of that class and `-sim` for the others, in [-1, 1]) turned into probabilities by
  `p_c = (s_c + 1) / 2`, renormalised over the classes for a single-label model (for two classes the pair already
  sums to 1: `p_1 = (1 + s_1) / 2`); multi-label: `(s_c + 1) / 2` per label.
- `mix`: `(1 - mix_weight) * head + mix_weight * knn`.

The decision threshold (`decisions.py`) then applies to these probabilities, whichever mode made them.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .files import atomic_write_bytes
from .retrieval import VectorIndex, knn_scores

MEMORY_WEIGHTS_FILENAME = "memory.safetensors"
MEMORY_INDEX_FILENAME = "memory.json"
MEMORY_FILENAMES = (MEMORY_WEIGHTS_FILENAME, MEMORY_INDEX_FILENAME)
MEMORY_FORMAT_VERSION = 1
PREDICTION_MODES = ("head", "knn", "mix")
DEFAULT_KNN_K = 20  # RGCL's: the 20 nearest neighbours, rank weights 20..1
# Values sampled per weight tensor by the fingerprint (evenly spaced): cheap at load even for CLIP ViT-L.
FINGERPRINT_SAMPLES = 4096


class LabelledMemoryError(ValueError):
    """A labelled memory that cannot be used or changed as asked; the message names the file, ids or rows."""


class MemoryMismatchError(LabelledMemoryError):
    """A memory whose fingerprint is not the model's: its embeddings were computed by another model."""


# ------------------------------------------------------------------------------------------------ modes


def check_prediction_mode(mode, k, mix_weight) -> tuple[str, int, float]:
    """The config's `prediction_mode`, `knn_k`, `mix_weight`, checked (refused with what is allowed)."""
    if mode not in PREDICTION_MODES:
        raise ValueError(f"prediction_mode must be one of {', '.join(PREDICTION_MODES)}; got {mode!r}.")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"knn_k must be a whole number >= 1; got {k!r}.")
    weight = float(mix_weight)
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"mix_weight must be in [0, 1]; got {mix_weight!r}.")
    return mode, int(k), weight


def knn_probabilities(scores, multi_label: bool = False) -> np.ndarray:
    """kNN scores in [-1, 1] (`retrieval.knn_scores`) -> probabilities (see the module docstring)."""
    probabilities = (np.asarray(scores, dtype=np.float64) + 1.0) / 2.0
    if multi_label:
        return probabilities
    totals = probabilities.sum(axis=-1, keepdims=True)
    uniform = np.full_like(probabilities, 1.0 / probabilities.shape[-1])
    return np.divide(probabilities, totals, out=uniform, where=totals > 0)


def combine_probabilities(head, knn_scores_, mode: str, mix_weight: float, multi_label: bool = False) -> np.ndarray:
    """The probabilities of `mode` from the head's probabilities and the kNN scores (None for mode `head`)."""
    head = np.asarray(head, dtype=np.float64)
    if mode == "head":
        return head
    if knn_scores_ is None:
        raise LabelledMemoryError(f"prediction_mode {mode!r} needs the model's labelled memory, and it has none.")
    knn = knn_probabilities(knn_scores_, multi_label)
    if mode == "knn":
        return knn
    return (1.0 - mix_weight) * head + mix_weight * knn


# ------------------------------------------------------------------------------------------------ fingerprint


def model_fingerprint(model) -> str:
    """A short hash of what makes the model's embeddings: the config's architecture fields and evenly spaced samples
    of every weight but the classifier's (which reads the embeddings, not makes them). Training, another checkpoint
    or another architecture changes it; a threshold, temperature or prediction mode does not. Samples are rounded to
    bfloat16, so the same checkpoint loaded in float32, bfloat16 or float16 keeps its fingerprint."""
    config = model.config
    digest = hashlib.sha256()
    architecture = {
        "fusion": config.fusion,
        "text_model_type": getattr(config.text_config, "model_type", None),
        "vision_model_type": getattr(config.vision_config, "model_type", None),
        "text_pooling": getattr(config, "text_pooling", None),
        "projection_dim": getattr(config, "projection_dim", None),
        "num_image_tokens": getattr(config, "num_image_tokens", None),
        "image_size": getattr(config, "image_size", None),
    }
    digest.update(json.dumps(architecture, sort_keys=True).encode())
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            if name.startswith("classifier."):
                continue
            digest.update(f"{name}:{tuple(tensor.shape)}".encode())
            flat = tensor.detach().reshape(-1)
            if flat.numel() == 0 or not (flat.is_floating_point() or flat.dtype in (torch.int64, torch.int32)):
                continue
            step = max(1, flat.numel() // FINGERPRINT_SAMPLES)
            sample = flat[::step][:FINGERPRINT_SAMPLES].to("cpu", torch.float32)
            digest.update(sample.to(torch.bfloat16).view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ the memory


class LabelledMemory:
    """Labelled examples embedded by one model: embeddings, labels, ids (+ captions and image paths for display).

    Build one with `LabelledMemory.empty(...)` and `add`, or load a checkpoint's with `LabelledMemory.load(folder)`;
    `search`/`neighbors`/`knn_scores` query it with L2-normalised embeddings (`model.embed(**inputs)`).
    `add` and `remove` change it in memory; `save(folder)` writes both files atomically.
    """

    def __init__(
        self,
        embeddings,
        labels,
        ids: Sequence[str],
        *,
        label_names: Sequence[str],
        fingerprint: str,
        multi_label: bool = False,
        captions: Sequence[str | None] | None = None,
        images: Sequence[str | None] | None = None,
    ):
        self.embeddings = embeddings if isinstance(embeddings, np.memmap) else _float32_rows(embeddings)
        self.label_names = [str(name) for name in label_names]
        self.multi_label = bool(multi_label)
        self.labels = _label_array(labels, len(self.label_names), self.multi_label)
        self.ids = [str(i) for i in ids]
        self.captions = list(captions) if captions is not None else [None] * len(self.ids)
        self.images = list(images) if images is not None else [None] * len(self.ids)
        self.fingerprint = str(fingerprint)
        counts = {len(self.embeddings), len(self.labels), len(self.ids), len(self.captions), len(self.images)}
        if len(counts) != 1:
            raise LabelledMemoryError(
                f"A memory needs one embedding, label, id, caption and image per row; got {len(self.embeddings)} "
                f"embeddings, {len(self.labels)} labels, {len(self.ids)} ids, {len(self.captions)} captions, "
                f"{len(self.images)} images."
            )
        duplicates = _duplicates(self.ids)
        if duplicates:
            raise LabelledMemoryError(f"Duplicate ids in a memory: {_names(duplicates)}.")
        self._positions = {identifier: position for position, identifier in enumerate(self.ids)}
        self._index = None

    @classmethod
    def empty(cls, dim: int, *, label_names, fingerprint: str, multi_label: bool = False) -> LabelledMemory:
        labels = np.zeros((0, len(label_names)) if multi_label else (0,), dtype=np.int8 if multi_label else np.int64)
        return cls(np.zeros((0, dim), np.float32), labels, [], label_names=label_names, fingerprint=fingerprint,
                   multi_label=multi_label)  # fmt: skip

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __contains__(self, identifier) -> bool:
        return str(identifier) in self._positions

    def __repr__(self) -> str:
        kind = "multi-label" if self.multi_label else "classes"
        return (
            f"LabelledMemory({len(self)} rows, dim {self.dim}, {kind} {self.label_names}, "
            f"fingerprint {self.fingerprint})"
        )

    # ---------------------------------------------------------------------------------------- changes

    def add(self, ids, embeddings, labels, captions=None, images=None) -> None:
        """Add rows. Refused, leaving the memory unchanged, when an id is already there or given twice (all such
        ids named), or when the embeddings or labels do not fit the memory."""
        ids = [str(i) for i in ids]
        embeddings = _float32_rows(embeddings)
        labels = _label_array(labels, len(self.label_names), self.multi_label)
        if len(embeddings) != len(ids) or len(labels) != len(ids):
            raise LabelledMemoryError(f"add: {len(ids)} ids, {len(embeddings)} embeddings and {len(labels)} labels.")
        if len(ids) and embeddings.shape[1] != self.dim:
            raise LabelledMemoryError(f"add: embeddings of width {embeddings.shape[1]}, the memory's are {self.dim}.")
        repeated = _duplicates(ids)
        if repeated:
            raise LabelledMemoryError(f"add: ids given more than once: {_names(repeated)}; nothing was added.")
        present = [i for i in ids if i in self._positions]
        if present:
            raise LabelledMemoryError(
                f"add: ids already in the memory: {_names(present)}; nothing was added (remove them first to "
                "replace them)."
            )
        norms = np.linalg.norm(embeddings, axis=1) if len(embeddings) else np.ones(0)
        if not np.all(np.abs(norms - 1.0) < 1e-3):
            raise LabelledMemoryError("add: embeddings must be L2-normalised (use model.embed(...)).")
        captions = list(captions) if captions is not None else [None] * len(ids)
        images = list(images) if images is not None else [None] * len(ids)
        if len(captions) != len(ids) or len(images) != len(ids):
            raise LabelledMemoryError(f"add: {len(ids)} ids but {len(captions)} captions and {len(images)} images.")
        self.embeddings = np.concatenate([np.asarray(self.embeddings), embeddings])
        self.labels = np.concatenate([self.labels, labels])
        self.ids += ids
        self.captions += [None if c is None else str(c) for c in captions]
        self.images += [None if i is None else str(i) for i in images]
        self._changed()

    def remove(self, ids) -> None:
        """Remove rows by id; an id not in the memory is refused (all such ids named), leaving it unchanged."""
        ids = [str(i) for i in ids]
        missing = [i for i in dict.fromkeys(ids) if i not in self._positions]
        if missing:
            raise LabelledMemoryError(f"remove: ids not in the memory: {_names(missing)}; nothing was removed.")
        drop = {self._positions[i] for i in ids}
        keep = np.array([p for p in range(len(self)) if p not in drop], dtype=np.int64)
        self.embeddings = np.asarray(self.embeddings)[keep] if len(keep) else np.zeros((0, self.dim), np.float32)
        self.labels = self.labels[keep]
        self.ids = [self.ids[p] for p in keep]
        self.captions = [self.captions[p] for p in keep]
        self.images = [self.images[p] for p in keep]
        self._changed()

    def _changed(self) -> None:
        self._positions = {identifier: position for position, identifier in enumerate(self.ids)}
        self._index = None

    # ---------------------------------------------------------------------------------------- queries

    @property
    def index(self) -> VectorIndex:
        """The search index (exact, approximate above `retrieval.APPROXIMATE_THRESHOLD` rows with FAISS)."""
        if self._index is None:
            self._index = VectorIndex(self.embeddings, approximate=None)
        return self._index

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`(similarities, positions)` of the `k` nearest rows of each query (see `VectorIndex.search`)."""
        if len(self) == 0:
            queries = np.asarray(queries)
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        return self.index.search(queries, k)

    def neighbor_labels(self, positions: np.ndarray) -> np.ndarray:
        """The labels at `positions` (from `search`), -1 (or a row of -1) where the position is -1."""
        safe = np.where(positions >= 0, positions, 0)
        labels = self.labels[safe]
        missing = positions < 0
        if self.multi_label:
            labels = np.where(missing[..., None], -1, labels)
        else:
            labels = np.where(missing, -1, labels)
        return labels

    def knn_scores(self, queries, k: int = DEFAULT_KNN_K) -> np.ndarray:
        """`(num_queries, num_labels)` RGCL kNN scores in [-1, 1] over the `k` nearest rows."""
        similarities, positions = self.search(queries, k)
        return knn_scores(similarities, self.neighbor_labels(positions), len(self.label_names))

    def neighbors(self, queries, k: int) -> list[list[dict]]:
        """Per query, its `k` nearest rows, best first: `{"id", "label", "similarity", "caption", "image"}`
        (`label`: the class name; multi-label: the list of label names)."""
        similarities, positions = self.search(queries, k)
        results = []
        for row_similarities, row_positions in zip(similarities, positions):
            found = []
            for similarity, position in zip(row_similarities, row_positions):
                if position < 0:
                    continue
                found.append(
                    {
                        "id": self.ids[position],
                        "label": self._label_name(position),
                        "similarity": float(similarity),
                        "caption": self.captions[position],
                        "image": self.images[position],
                    }
                )
            results.append(found)
        return results

    def _label_name(self, position: int):
        if self.multi_label:
            return [self.label_names[i] for i in np.flatnonzero(self.labels[position])]
        return self.label_names[int(self.labels[position])]

    # ---------------------------------------------------------------------------------------- files

    def check_model(self, model, where: str = "the memory") -> None:
        """Refuse (`MemoryMismatchError`) a memory whose rows another model embedded, or whose classes differ."""
        expected = model_fingerprint(model)
        if expected != self.fingerprint:
            raise MemoryMismatchError(
                f"{where} was built by another model (fingerprint {self.fingerprint}, this model's is {expected}): "
                "its embeddings do not match this model's. Build the memory again with this model (mmfusion-memory "
                "add CHECKPOINT --input DATA, after removing the old memory files), or load the model it was built with."
            )
        names = [model.config.id2label[i] for i in sorted(model.config.id2label, key=int)]
        if [str(n) for n in names] != self.label_names:
            raise MemoryMismatchError(f"{where} has classes {self.label_names}; the model's are {names}.")

    def save(self, folder: str | os.PathLike) -> Path:
        """Write `memory.safetensors` and `memory.json` into `folder`, each atomically (temporary file + rename); a
        shared write token lets `load` refuse a pair left mixed by a crash between the two renames."""
        from safetensors.numpy import save

        folder = Path(folder)
        token = uuid.uuid4().hex
        tensors = {"embeddings": np.ascontiguousarray(self.embeddings, np.float32), "labels": self.labels}
        data = save(tensors, metadata={"write": token, "format_version": str(MEMORY_FORMAT_VERSION)})
        index = {
            "format_version": MEMORY_FORMAT_VERSION,
            "write": token,
            "rows": len(self),
            "dim": self.dim,
            "fingerprint": self.fingerprint,
            "label_names": self.label_names,
            "multi_label": self.multi_label,
            "ids": self.ids,
            "captions": self.captions,
            "images": self.images,
        }
        text = json.dumps(index, ensure_ascii=False) + "\n"
        atomic_write_bytes(folder / MEMORY_WEIGHTS_FILENAME, data)
        atomic_write_bytes(folder / MEMORY_INDEX_FILENAME, text.encode("utf-8"))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, *, mmap: bool = True) -> LabelledMemory | None:
        """The memory saved in `folder`, or None when it has none. `mmap`: embeddings memory-mapped (read lazily)."""
        folder = Path(folder)
        weights, index_path = folder / MEMORY_WEIGHTS_FILENAME, folder / MEMORY_INDEX_FILENAME
        if not weights.is_file() and not index_path.is_file():
            return None
        for path in (weights, index_path):
            if not path.is_file():
                raise LabelledMemoryError(f"{path} is missing: a memory is {' and '.join(MEMORY_FILENAMES)} together.")
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
            ids, rows = index["ids"], int(index["rows"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
            raise LabelledMemoryError(
                f"{index_path} is not a memory index ({error}); the file may be truncated."
            ) from error
        header, data_start = _safetensors_header(weights)
        if header.get("__metadata__", {}).get("write") != index.get("write"):
            raise LabelledMemoryError(
                f"{weights} and {index_path} come from different writes (an interrupted save?): rebuild the memory."
            )
        entry = header.get("embeddings")
        if entry is None or entry.get("dtype") != "F32" or len(entry.get("shape", ())) != 2:
            raise LabelledMemoryError(f"{weights} has no float32 (rows, dim) tensor 'embeddings'.")
        shape = tuple(entry["shape"])
        start, end = entry["data_offsets"]
        if mmap and shape[0] > 0:
            embeddings = np.memmap(weights, dtype=np.float32, mode="r", offset=data_start + start, shape=shape)
        else:
            with weights.open("rb") as handle:
                handle.seek(data_start + start)
                embeddings = np.frombuffer(handle.read(end - start), dtype=np.float32).reshape(shape).copy()
        from safetensors import safe_open

        with safe_open(weights, framework="numpy") as handle:
            labels = handle.get_tensor("labels")
        if not (shape[0] == rows == len(ids) == len(labels)):
            raise LabelledMemoryError(
                f"{folder}: the memory's files disagree ({shape[0]} embeddings, {len(labels)} labels, {len(ids)} ids, "
                f"{rows} rows declared)."
            )
        return cls(
            embeddings,
            labels,
            ids,
            label_names=index["label_names"],
            fingerprint=index["fingerprint"],
            multi_label=index.get("multi_label", False),
            captions=index.get("captions"),
            images=index.get("images"),
        )


def remove_memory_files(folder: str | os.PathLike) -> None:
    """Delete a folder's memory files (a memory the model saved there no longer matches)."""
    for name in MEMORY_FILENAMES:
        (Path(folder) / name).unlink(missing_ok=True)


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """The safetensors header and where the tensor data starts (8-byte length, JSON header, data)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise LabelledMemoryError(f"{path} is truncated ({size} bytes).")
        (length,) = struct.unpack("<Q", prefix)
        if 8 + length > size:
            raise LabelledMemoryError(
                f"{path} is truncated: its header alone should take {8 + length} bytes of {size}."
            )
        try:
            header = json.loads(handle.read(length))
        except (ValueError, UnicodeDecodeError) as error:
            raise LabelledMemoryError(f"{path} is not a safetensors file ({error}).") from error
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    if size < 8 + length + max(ends, default=0):
        raise LabelledMemoryError(
            f"{path} is truncated: {size} bytes of the {8 + length + max(ends)} its header describes."
        )
    return header, 8 + length


def _float32_rows(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float32).numpy()
    values = np.ascontiguousarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise LabelledMemoryError(f"Embeddings are a 2-D array (rows, dim); got shape {values.shape}.")
    if not np.isfinite(values).all():
        raise LabelledMemoryError("Embeddings must be finite (got NaN or infinity).")
    return values


def _label_array(labels, num_labels: int, multi_label: bool) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.cpu().numpy()
    if multi_label:
        array = np.asarray(labels).reshape(-1, num_labels) if np.size(labels) else np.zeros((0, num_labels))
        if not np.isin(array, (0, 1)).all():
            raise LabelledMemoryError("Multi-label memory labels are 0/1 rows, one column per label.")
        return array.astype(np.int8)
    array = np.asarray(labels).reshape(-1)
    if array.size and (array.dtype.kind not in "iu" or array.min() < 0 or array.max() >= num_labels):
        raise LabelledMemoryError(
            f"Memory labels are class ids in 0..{num_labels - 1}; got {sorted(set(array.tolist()))[:10]}."
        )
    return array.astype(np.int64)


def _duplicates(ids: Sequence[str]) -> list[str]:
    seen, repeated = set(), []
    for identifier in ids:
        if identifier in seen and identifier not in repeated:
            repeated.append(identifier)
        seen.add(identifier)
    return repeated


def _names(ids: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


__all__ = [
    "DEFAULT_KNN_K",
    "MEMORY_FILENAMES",
    "MEMORY_INDEX_FILENAME",
    "MEMORY_WEIGHTS_FILENAME",
    "PREDICTION_MODES",
    "LabelledMemory",
    "LabelledMemoryError",
    "MemoryMismatchError",
    "check_prediction_mode",
    "combine_probabilities",
    "knn_probabilities",
    "model_fingerprint",
    "remove_memory_files",
]
