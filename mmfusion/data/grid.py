"""`save_grid`: a PNG contact sheet of examples with their captions and labels, to look at the data."""

from __future__ import annotations

import math
import os
import textwrap

import datasets

from ..processing_mmfusion import to_rgb

DEFAULT_CELL_SIZE = (3.0, 3.4)  # inches per example (width, height): room for the image and a wrapped caption
DEFAULT_DPI = 100


def grid_pixel_size(
    num_examples: int, columns: int, cell_size: tuple[float, float] = DEFAULT_CELL_SIZE, dpi: int = DEFAULT_DPI
) -> tuple[int, int]:
    """`(width, height)` in pixels of the PNG written by `save_grid` for `num_examples` examples."""
    columns = max(1, min(columns, num_examples))
    rows = max(1, math.ceil(num_examples / columns))
    return round(columns * cell_size[0] * dpi), round(rows * cell_size[1] * dpi)


def save_grid(
    dataset: datasets.Dataset,
    path: str | os.PathLike,
    num_examples: int = 16,
    columns: int = 4,
    *,
    cell_size: tuple[float, float] = DEFAULT_CELL_SIZE,
    dpi: int = DEFAULT_DPI,
    caption_width: int = 32,
) -> str:
    """Save a grid of the first `num_examples` examples of `dataset`, each with its id, label and caption.

    The figure is `columns * cell_size[0]` by `rows * cell_size[1]` inches at `dpi` (see `grid_pixel_size`); it is
    drawn with matplotlib's Agg backend, so no display is needed.

    Args:
        dataset (`datasets.Dataset`):
            One split with `image`, `text` and `label` columns (as made by the `mmfusion.data` loaders).
        path (`str` or `os.PathLike`):
            Output PNG file.
        num_examples (`int`, defaults to 16):
            How many examples to show (fewer if the split is smaller).
        columns (`int`, defaults to 4):
            Examples per row.

    Returns:
        `str`: the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    num_examples = min(num_examples, len(dataset))
    if num_examples <= 0:
        raise ValueError("save_grid needs at least one example")
    columns = max(1, min(columns, num_examples))
    rows = math.ceil(num_examples / columns)
    label_feature = dataset.features.get("label")
    names = label_feature.names if isinstance(label_feature, datasets.ClassLabel) else None

    # A Figure with its own Agg canvas instead of pyplot: no global state, no GUI backend, safe in threads.
    figure = Figure(figsize=(columns * cell_size[0], rows * cell_size[1]), dpi=dpi)
    FigureCanvasAgg(figure)
    for index in range(num_examples):
        example = dataset[index]
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.imshow(to_rgb(example["image"]))
        axes.set_xticks([])
        axes.set_yticks([])
        label = example.get("label")
        label_text = "unlabeled" if label in (None, -1) else (names[label] if names else str(label))
        axes.set_title(f"{example.get('id', index)} | {label_text}", fontsize=9)
        caption = textwrap.fill(example.get("text") or "(no caption)", width=caption_width, max_lines=3)
        axes.set_xlabel(caption, fontsize=8)
    figure.subplots_adjust(left=0.02, right=0.98, top=0.95, bottom=0.08, wspace=0.1, hspace=0.45)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, format="png", dpi=dpi)  # no bbox_inches="tight": keep the documented pixel size
    return path
