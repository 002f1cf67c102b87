"""`mmfusion-memory`: change a checkpoint's labelled memory without retraining (add rows, remove rows, show it).

```
mmfusion-memory add CHECKPOINT --input new_labels.jsonl            # embed with the frozen model, add, save
mmfusion-memory add CHECKPOINT --input data/hateful_memes --split dev_unseen
mmfusion-memory remove CHECKPOINT --ids 42 1337
mmfusion-memory show CHECKPOINT
```

DATA is read by the project's loaders with the same options as train.py and mmfusion-predict (`LoaderArguments`:
`--image-column`, `--on-bad-rows`, ...). Every request is checked in full before anything is written, and the memory
files are then rewritten atomically: a bad row (named by the loader: file, line, id), an unlabeled row, an id already
in the memory or given twice, a memory built by another model (fingerprint) or an unknown id to remove stops the
command with a message and leaves the checkpoint as it was.

The Python equivalents: `add_to_checkpoint_memory(...)`, `remove_from_checkpoint_memory(...)`, or on a loaded model
`model.add_to_memory(ids, labels, **processor(images=..., text=...))`, `model.memory.remove(ids)` and
`model.save_memory(folder)`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from transformers import HfArgumentParser

from ..checkpoints import check_checkpoint
from ..data.options import LoaderArguments
from ..evaluation.predictions import has_label, multi_hot
from ..memory import LabelledMemory, LabelledMemoryError
from .predictor import choose_split, encoded_image, label_names_from_config

DEFAULT_BATCH_SIZE = 32


def load_checkpoint(checkpoint: str | os.PathLike):
    """The model (its memory loaded and checked against it) and processor of a local checkpoint folder."""
    from transformers import AutoModelForSequenceClassification, AutoProcessor

    if not Path(checkpoint).is_dir():
        raise FileNotFoundError(f"{checkpoint} is not a checkpoint folder (the memory is rewritten in place).")
    check_checkpoint(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(os.fspath(checkpoint), trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(os.fspath(checkpoint), trust_remote_code=True)
    return model, processor


def add_to_checkpoint_memory(
    checkpoint: str | os.PathLike,
    source,
    split: str | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
    **load_options,
) -> LabelledMemory:
    """Embed every row of `source` (one split: `split`, or its only one) with the checkpoint's frozen model and add
    the rows to its memory (created when it has none), then rewrite the memory files atomically.

    Refused before anything is written: unlabeled rows, ids already in the memory or repeated in `source`, classes
    that are not the model's, a memory another model built; bad rows as the loader decides (`on_bad_rows`).
    `load_options`: the fields of `LoaderArguments` (as `mmfusion-memory add` passes them)."""
    import datasets
    import torch
    from tqdm.auto import tqdm

    from ..data import detect_kind, load_image_text_dataset
    from .images import load_image

    model, processor = load_checkpoint(checkpoint)
    label_names = label_names_from_config(model.config)
    multi_label = model.config.problem_type == "multi_label_classification"
    if detect_kind(source) == "files" and load_options.get("class_names") is None:
        load_options["class_names"] = list(label_names)  # string labels are read in the model's class order
    dataset_dict = load_image_text_dataset(source, **load_options)
    split = choose_split(dataset_dict, split, source)
    dataset = dataset_dict[split]
    where = f"{source} ({split})"
    if "label" not in dataset.column_names:
        raise LabelledMemoryError(f"{where} has no labels: the memory holds labelled examples only.")
    feature = dataset.features["label"]
    names = list((feature.feature if multi_label else feature).names)
    if names != label_names:
        raise LabelledMemoryError(f"{where} has classes {names}; the model's are {label_names}.")
    ids = [str(i) for i in dataset["id"]]
    labels = dataset["label"]
    unlabeled = [i for i, label in zip(ids, labels) if not has_label(label)]
    if unlabeled:
        raise LabelledMemoryError(
            f"{where}: rows without a label: ids {', '.join(map(repr, unlabeled[:20]))}"
            f"{' and more' if len(unlabeled) > 20 else ''}; the memory holds labelled examples only. Nothing was added."
        )
    repeated = [i for i, count in Counter(ids).items() if count > 1]
    if repeated:
        raise LabelledMemoryError(f"{where}: ids given more than once: {', '.join(map(repr, repeated[:20]))}.")
    if model.memory is not None:
        present = [i for i in ids if i in model.memory]
        if present:
            raise LabelledMemoryError(
                f"{where}: ids already in the memory of {checkpoint}: {', '.join(map(repr, present[:20]))}"
                f"{f' and {len(present) - 20} more' if len(present) > 20 else ''}; nothing was added (remove them "
                "first to replace them: mmfusion-memory remove CHECKPOINT --ids ...)."
            )
    targets = multi_hot(labels, len(label_names)) if multi_label else np.asarray(labels, dtype=np.int64)
    undecoded = dataset.cast_column("image", datasets.Image(decode=False))
    images = [encoded_image(item) for item in undecoded["image"]]
    shown = [item.get("path") for item in undecoded["image"]]
    texts = ["" if text is None else str(text) for text in dataset["text"]]
    vectors = []
    for start in tqdm(range(0, len(ids), batch_size), disable=not progress, desc="Embedding"):
        batch = slice(start, start + batch_size)
        inputs = processor(images=[load_image(image) for image in images[batch]], text=texts[batch])
        with torch.no_grad():
            vectors.append(model.embed(**inputs).float().cpu().numpy())
    embeddings = np.concatenate(vectors) if vectors else np.zeros((0, model.mmfusion.output_size), np.float32)
    memory = model.memory if model.memory is not None else model.empty_memory()
    memory.add(ids, embeddings, targets, captions=texts, images=shown)
    model.memory = memory
    model.save_memory(checkpoint)
    return memory


def remove_from_checkpoint_memory(checkpoint: str | os.PathLike, ids) -> LabelledMemory:
    """Remove rows by id from a checkpoint's memory and rewrite its files atomically; an unknown id is refused (all
    of them named) and nothing is written."""
    model, _ = load_checkpoint(checkpoint)
    if model.memory is None:
        raise LabelledMemoryError(f"{checkpoint} has no labelled memory to remove rows from.")
    model.memory.remove(ids)
    model.save_memory(checkpoint)
    return model.memory


def describe(memory: LabelledMemory | None, checkpoint) -> str:
    if memory is None:
        return f"{checkpoint}: no labelled memory."
    if memory.multi_label:
        counts = dict(zip(memory.label_names, np.asarray(memory.labels).sum(axis=0).tolist()))
    else:
        counts = {name: int((memory.labels == index).sum()) for index, name in enumerate(memory.label_names)}
    per_class = ", ".join(f"{name} {count}" for name, count in counts.items())
    return f"{checkpoint}: {len(memory)} rows of dim {memory.dim} ({per_class}); fingerprint {memory.fingerprint}."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmfusion-memory",
        description="Add labelled examples to a checkpoint's memory, or remove them, without retraining.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    # `add` reads DATA with the options every data-loading command takes (LoaderArguments, parsed from the dataclass)
    add = commands.add_parser(
        "add",
        parents=[HfArgumentParser(LoaderArguments, add_help=False)],
        help="embed DATA's rows with the frozen model and add them",
        description="Embed DATA's labelled rows with the checkpoint's frozen model and add them to its memory.",
    )
    add.add_argument("checkpoint", help="checkpoint folder (its memory files are rewritten)")
    add.add_argument("--input", required=True, help="'demo', a dataset folder, a .jsonl/.csv/.tsv file")
    add.add_argument("--split", help="the split of --input to add (needed when it has several)")
    add.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="default: %(default)s")
    remove = commands.add_parser("remove", help="remove rows by id")
    remove.add_argument("checkpoint", help="checkpoint folder")
    remove.add_argument("--ids", nargs="+", required=True, help="ids to remove (space- or comma-separated)")
    show = commands.add_parser("show", help="how many rows of each class, and the fingerprint")
    show.add_argument("checkpoint", help="checkpoint folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..data import BadRowError
    from .images import ImageCheckError

    try:
        if args.command == "add":
            memory = add_to_checkpoint_memory(
                args.checkpoint,
                args.input,
                args.split,
                batch_size=args.batch_size,
                progress=True,
                **LoaderArguments.from_namespace(args).as_loader_kwargs(),
            )
            print(f"Added the rows of {args.input}; {describe(memory, args.checkpoint)}", file=sys.stderr)
        elif args.command == "remove":
            ids = [part for value in args.ids for part in value.split(",") if part]
            memory = remove_from_checkpoint_memory(args.checkpoint, ids)
            print(f"Removed {len(ids)} rows; {describe(memory, args.checkpoint)}", file=sys.stderr)
        else:
            model, _ = load_checkpoint(args.checkpoint)
            print(describe(model.memory, args.checkpoint))
    except (BadRowError, ImageCheckError, OSError, ValueError) as error:  # LabelledMemoryError is a ValueError
        print(f"mmfusion-memory: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
