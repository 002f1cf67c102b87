"""`mmfusion-data`: look at a dataset from the command line, and the two functions it uses (`describe`, `save_grid`).

```
mmfusion-data stats SOURCE                                  # split sizes, label balance, train/evaluation overlap
mmfusion-data grid SOURCE --split train --out grid.png      # a PNG grid of examples with captions and labels
mmfusion-data convert SOURCE OUT [--push-to-hub org/name]   # a Hub-ready copy: parquet, images embedded, label names
```

SOURCE is anything `train.py --dataset` accepts (see `load_image_text_dataset`): `demo`, a Hateful Memes folder, a
`.jsonl`/`.csv`/`.tsv` file, or a Hugging Face Hub dataset name. The options that say how to read it
(`--image-column`, `--class-names`, `--on-bad-rows`, ...) are `LoaderArguments` (`options.py`), the same in every
command; write them after SOURCE, as `--class-names a b` and `--allow-outside-images` may take the next word as a value.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import textwrap
from collections import Counter
from typing import Any, TextIO

import datasets
from transformers import HfArgumentParser

from ..processing_mmfusion import to_rgb
from .errors import BadRowError
from .options import LoaderArguments
from .sources import load_image_text_dataset

DEFAULT_CELL_SIZE = (3.0, 3.4)  # inches per example (width, height): room for the image and a wrapped caption
DEFAULT_DPI = 100


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
        multi_label = isinstance(feature, datasets.List)  # a list of classes per row: each class counted
        if multi_label:
            feature = feature.feature
        names = feature.names if isinstance(feature, datasets.ClassLabel) else None
        # Read the label column from Arrow directly: no image is decoded.
        values = dataset.with_format("arrow")["label"].to_pylist() if "label" in dataset.column_names else []
        if multi_label:
            counts = Counter(label for row in values if row is not None for label in row)
            counts[None] = sum(row is None for row in values)
        else:
            counts = Counter(values)
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
    if isinstance(label_feature, datasets.List):
        label_feature = label_feature.feature
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
        if isinstance(label, list):  # a multi-label task
            label_text = ", ".join(str(names[i]) if names else str(i) for i in label) or "none"
        else:
            label_text = "unlabeled" if label in (None, -1) else (names[label] if names else str(label))
        axes.set_title(f"{example.get('id', index)} | {label_text}", fontsize=9)
        caption = textwrap.fill(example.get("text") or "(no caption)", width=caption_width, max_lines=3)
        axes.set_xlabel(caption, fontsize=8)
    figure.subplots_adjust(left=0.02, right=0.98, top=0.95, bottom=0.08, wspace=0.1, hspace=0.45)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, format="png", dpi=dpi)  # no bbox_inches="tight": keep the documented pixel size
    return path


def convert_to_hub_folder(
    dataset_dict: datasets.DatasetDict, out: str | os.PathLike, *, report=None
) -> dict[str, str]:
    """Write `dataset_dict` as a Hub-ready dataset folder: `data/<split>-00000-of-00001.parquet` per split (images
    embedded as bytes, the features, hence the `ClassLabel` names, in the parquet schema) and a `README.md` whose YAML
    names the splits, so that `datasets.load_dataset(out)` gives the same splits, rows, labels and image bytes, and
    the folder can be uploaded as is (`huggingface-cli upload --repo-type dataset`, or `push_to_hub`).

    Returns:
        `{split: parquet path}`.
    """
    from datasets.table import embed_table_storage

    out = os.path.abspath(os.fspath(out))
    os.makedirs(os.path.join(out, "data"), exist_ok=True)
    written = {}
    for split, dataset in dataset_dict.items():
        path = os.path.join(out, "data", f"{split}-00000-of-00001.parquet")
        # As push_to_hub does: image files are read into the table, so the parquet file holds their bytes.
        embedded = dataset.with_format("arrow").map(embed_table_storage, batched=True, desc=f"Embedding {split}")
        embedded.with_format(None).to_parquet(path)
        written[split] = path
    config = "\n".join(f"      - split: {split}\n        path: data/{split}-*" for split in dataset_dict)
    lines = [
        "---",
        "configs:",
        "  - config_name: default",
        "    data_files:",
        config,
        "---",
        "",
        "# Image+text classification data",
        "",
        f"Converted by `mmfusion-data convert` from {report.source if report is not None else 'a dataset'}: columns "
        "`id`, `image`, `text`, `label`.",
    ]
    if report is not None and report.task:
        lines += ["", f"Labels: {report.task_line()}."]
    counts = ", ".join(f"{split} {len(dataset)}" for split, dataset in dataset_dict.items())
    lines += ["", f"Rows: {counts}.", ""]
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmfusion-data",
        description="Look at image+text classification data.",
        epilog="The data options (--image-column, --on-bad-rows, ...) are the same in train.py, mmfusion-predict and "
        "mmfusion-export (mmfusion.data.LoaderArguments).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    # Every subcommand loads data, so every one takes all the loader options, parsed from the one dataclass.
    loader_options = HfArgumentParser(LoaderArguments, add_help=False)

    def add_source_command(name: str, help: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help, parents=[loader_options])
        command.add_argument(
            "source", help="'demo', a Hateful Memes folder, a .jsonl/.csv/.tsv file, or a Hub dataset"
        )
        # Before the options were shared this command called the demo seed --seed (train.py's --seed is the
        # Trainer's); kept as a hidden spelling of --demo-seed.
        command.add_argument("--seed", dest="demo_seed", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        return command

    add_source_command("stats", "split sizes, label balance and train/evaluation overlap")
    grid = add_source_command("grid", "save a PNG grid of examples")
    grid.add_argument("--split", default="train")
    grid.add_argument("--out", default="grid.png")
    grid.add_argument("--num-examples", type=int, default=16)
    grid.add_argument("--columns", type=int, default=4)
    convert = add_source_command("convert", "write a Hub-ready copy (parquet, images embedded, label names)")
    convert.add_argument("out", help="output folder; datasets.load_dataset(OUT) reads it back")
    convert.add_argument("--push-to-hub", "--push_to_hub", dest="push_to_hub", default=None, metavar="REPO",
                         help="also upload it as this Hub dataset repository (org/name)")  # fmt: skip
    return parser


def _load(args: argparse.Namespace):
    """Every option goes to the one dispatch; those a source does not use are at their defaults, which it accepts."""
    options = LoaderArguments.from_namespace(args)
    return load_image_text_dataset(args.source, **options.as_loader_kwargs(), return_report=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mmfusion-data` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        dataset_dict, report = _load(args)
    except (BadRowError, ValueError, TypeError, FileNotFoundError) as err:
        print(f"mmfusion-data: error: {err}", file=sys.stderr)
        return 1
    if args.command == "stats":
        if report.task:
            print(report.task_line())
        describe(dataset_dict)
        for split in report.splits.values():
            for reason, count in split.outside_task.items():
                print(f"{split.split}: {count} rows outside the task ({reason})")
        for line in report.overlap_warnings():
            print(f"warning: {line}")
        if report.num_skipped:
            print(f"skipped {report.num_skipped} bad row(s); report: {report.path}")
        return 0
    if args.command == "convert":
        written = convert_to_hub_folder(dataset_dict, args.out, report=report)
        for split, path in written.items():
            print(f"wrote {split}: {len(dataset_dict[split])} rows to {path}")
        if args.push_to_hub:
            datasets.load_dataset(os.path.abspath(args.out)).push_to_hub(args.push_to_hub)
            print(f"pushed to https://huggingface.co/datasets/{args.push_to_hub}")
        return 0
    if args.split not in dataset_dict:
        print(f"mmfusion-data: error: no split {args.split!r} (splits: {list(dataset_dict)})", file=sys.stderr)
        return 1
    path = save_grid(dataset_dict[args.split], args.out, num_examples=args.num_examples, columns=args.columns)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
