"""The columns every mmfusion dataset has: `id`, `image`, `text`, `label`."""

from __future__ import annotations

from collections.abc import Sequence

import datasets

COLUMNS = ("id", "image", "text", "label")


def image_text_features(class_names: Sequence[str]) -> datasets.Features:
    """`datasets.Features` for an image+text classification dataset with the given ordered class names.

    The image feature has no `mode`: images are already stored as RGB (see `mmfusion.data.images`), and
    `datasets.Image(mode="RGB")` would re-convert with PIL's lossy defaults.
    """
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Image(),
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=list(class_names)),
        }
    )
