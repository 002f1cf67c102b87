"""`mmfusion-data`: look at a dataset from the command line.

```
mmfusion-data stats SOURCE                                  # split sizes and label balance
mmfusion-data grid SOURCE --split train --out grid.png      # a PNG grid of examples with captions and labels
```

SOURCE is a Hateful Memes folder, a `.jsonl`/`.csv` file, or `demo`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .grid import save_grid
from .loading import load_image_text_dataset
from .summary import describe
from .validation import BadRowError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmfusion-data", description="Look at image+text classification data.")
    commands = parser.add_subparsers(dest="command", required=True)

    def add_source_arguments(command: argparse.ArgumentParser) -> None:
        command.add_argument("source", help="Hateful Memes folder, .jsonl/.csv file, or 'demo'")
        command.add_argument("--on-bad-rows", choices=["error", "skip"], default="error")
        command.add_argument("--cache-dir", default=None, help="datasets cache directory")
        command.add_argument("--seed", type=int, default=0, help="demo seed")
        command.add_argument("--image-column", default="image")
        command.add_argument("--text-column", default="text")
        command.add_argument("--label-column", default="label")
        command.add_argument("--id-column", default="id")
        command.add_argument("--class-names", default=None, help="comma-separated class names, in label order")

    stats = commands.add_parser("stats", help="split sizes and label balance")
    add_source_arguments(stats)
    grid = commands.add_parser("grid", help="save a PNG grid of examples")
    add_source_arguments(grid)
    grid.add_argument("--split", default="train")
    grid.add_argument("--out", default="grid.png")
    grid.add_argument("--num-examples", type=int, default=16)
    grid.add_argument("--columns", type=int, default=4)
    return parser


def _load(args: argparse.Namespace):
    if args.source == "demo":
        return load_image_text_dataset("demo", seed=args.seed, cache_dir=args.cache_dir)
    options = {"on_bad_rows": args.on_bad_rows, "cache_dir": args.cache_dir}
    if not args.source.endswith(("/", "\\")) and args.source.lower().endswith((".jsonl", ".csv", ".tsv")):
        options.update(
            image_column=args.image_column,
            text_column=args.text_column,
            label_column=args.label_column,
            id_column=args.id_column,
            class_names=args.class_names.split(",") if args.class_names else None,
        )
    return load_image_text_dataset(args.source, **options)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mmfusion-data` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        dataset_dict = _load(args)
    except (BadRowError, ValueError, FileNotFoundError) as err:
        print(f"mmfusion-data: error: {err}", file=sys.stderr)
        return 1
    if args.command == "stats":
        describe(dataset_dict)
        return 0
    if args.split not in dataset_dict:
        print(f"mmfusion-data: error: no split {args.split!r} (splits: {list(dataset_dict)})", file=sys.stderr)
        return 1
    path = save_grid(dataset_dict[args.split], args.out, num_examples=args.num_examples, columns=args.columns)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
