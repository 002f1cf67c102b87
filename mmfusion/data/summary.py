"""`describe`: split sizes and label balance of a `DatasetDict`, without decoding any image."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any, TextIO

import datasets


def describe(
    dataset_dict: datasets.DatasetDict | datasets.Dataset, *, print_stats: bool = True, file: TextIO | None = None
) -> dict[str, dict[str, Any]]:
    """Count rows and labels per split, print a small table (to `file`, default stdout) and return the counts.

    Returns:
        `{split: {"num_rows": int, "labels": {class name: count}, "unlabeled": int}}`, classes in label order.
    """
    if isinstance(dataset_dict, datasets.Dataset):
        dataset_dict = datasets.DatasetDict({str(dataset_dict.split or "train"): dataset_dict})
    stats = {}
    for split, dataset in dataset_dict.items():
        feature = dataset.features.get("label")
        names = feature.names if isinstance(feature, datasets.ClassLabel) else None
        # Read the label column from Arrow directly: no image is decoded.
        counts = (
            Counter(dataset.with_format("arrow")["label"].to_pylist())
            if "label" in dataset.column_names
            else Counter()
        )
        unlabeled = counts.pop(-1, 0) + counts.pop(None, 0)
        if names is not None:
            labels = {name: counts.get(i, 0) for i, name in enumerate(names)}
        else:
            labels = {str(label): count for label, count in sorted(counts.items(), key=lambda item: str(item[0]))}
        stats[split] = {"num_rows": len(dataset), "labels": labels, "unlabeled": unlabeled}
    if print_stats:
        print(format_description(stats), file=file if file is not None else sys.stdout)
    return stats


def format_description(stats: dict[str, dict[str, Any]]) -> str:
    """The table printed by `describe`."""
    lines = []
    for split, split_stats in stats.items():
        num_rows = split_stats["num_rows"]
        parts = [
            f"{name} {count} ({count / num_rows:.1%})" if num_rows else f"{name} 0"
            for name, count in split_stats["labels"].items()
        ]
        if split_stats["unlabeled"]:
            parts.append(f"unlabeled {split_stats['unlabeled']}")
        lines.append(f"{split}: {num_rows} rows | " + ", ".join(parts))
    return "\n".join(lines)
