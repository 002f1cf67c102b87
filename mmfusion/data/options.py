"""`LoaderArguments`: the options every command that loads data accepts, declared once.

`train.py` (`DataArguments` inherits them), `mmfusion-data`, `mmfusion-predict --input` and `mmfusion-export
--calibration` parse this one dataclass with `transformers.HfArgumentParser`, so a flag added here reaches every
command, under both spellings (`--image_column` and `--image-column`). The loaders (`ImageTextConfig`,
`from_dataset`, `load_demo_dataset`) take their defaults from here too.

```python
>>> from mmfusion.data import load_image_text_dataset
>>> options = LoaderArguments(image_column="img", text_column="caption")
>>> dataset = load_image_text_dataset("memes.jsonl", **options.as_loader_kwargs())
```
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ON_BAD_ROWS_CHOICES, check_on_bad_rows
from .images import DEFAULT_MAX_IMAGE_PIXELS
from .readers import DEFAULT_ENCODING

# What `--dataset_format` may force (`auto`: recognised from the files present). The meme benchmarks' names are the
# keys of `meme_datasets.LAYOUTS` (checked there); the others are the sources of `sources.py`.
MEME_FORMATS = ("mami", "harmeme", "memotion", "multioff", "mmhs150k", "pridemm")
DATASET_FORMATS = ("auto", "hateful_memes", *MEME_FORMATS, "files", "dataset", "hub", "demo")


@dataclass
class LoaderArguments:
    """Column names, class order and bad-input handling of `mmfusion.data.load_image_text_dataset`.

    Options a source does not use (column names for a Hateful Memes folder, the demo seed for a file) are accepted at
    their defaults, so every command passes all of them.
    """

    image_column: str = field(
        default="image",
        metadata={"help": "Column holding the image path (relative to the data file's folder). Default: %(default)s"},
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the caption. Default: %(default)s"})
    label_column: str = field(
        default="label",
        metadata={"help": "Column holding the label; a file without it is unlabeled. Default: %(default)s"},
    )
    id_column: str | None = field(
        default="id",
        metadata={
            "help": "Column holding the row id; without it the 0-based row number is the id. Default: %(default)s"
        },
    )
    class_names: list[str] | None = field(
        default=None,
        metadata={
            "help": "Class names in label order, space- or comma-separated (e.g. negative neutral positive). "
            "Default: %(default)s, i.e. the sorted string labels, or 0..N-1 for integer labels."
        },
    )
    encoding: str = field(
        default=DEFAULT_ENCODING,
        metadata={"help": "Text encoding of .jsonl/.csv/.tsv files (e.g. cp1252). Default: %(default)s"},
    )
    on_bad_rows: str = field(
        default="error",
        metadata={
            "help": "error: stop at the first bad row, naming its file, line and id; skip: leave bad rows out and "
            "list them in the load report. Default: %(default)s",
            "choices": list(ON_BAD_ROWS_CHOICES),
        },
    )
    allow_outside_images: bool = field(
        default=False,
        metadata={
            "help": "Accept image paths that leave the dataset folder (../, absolute paths, symlinks out). Default: %(default)s"
        },
    )
    max_image_pixels: int = field(
        default=DEFAULT_MAX_IMAGE_PIXELS,
        metadata={"help": "Images with more pixels are bad rows (decompression-bomb guard). Default: %(default)s"},
    )
    cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "datasets cache directory for the loaded data. Default: %(default)s, i.e. datasets' own (the demo's: its folder)."
        },
    )
    demo_seed: int = field(default=0, metadata={"help": "Seed of the generated demo dataset. Default: %(default)s"})
    dataset_format: str = field(
        default="auto",
        metadata={
            "help": "Layout of the source: auto recognises it from the files present (Hateful Memes, MAMI, HarMeme, "
            "Memotion 7k, MultiOFF, MMHS150K, PrideMM folders as downloaded; .jsonl/.csv files; Hub names); a name "
            "forces one. Default: %(default)s",
            "choices": list(DATASET_FORMATS),
        },
    )
    task: str | None = field(
        default=None,
        metadata={
            "help": "Label set of a dataset that has several (e.g. MAMI A or B, HarMeme harm, harmful or target); "
            "the load report names the tasks and the mapping. Default: %(default)s, i.e. the dataset's default task."
        },
    )

    def __post_init__(self):
        check_on_bad_rows(self.on_bad_rows)
        if self.class_names is not None:
            # `mmfusion-data --class-names` used to take one comma-separated value; both spellings keep working.
            self.class_names = [name.strip() for value in self.class_names for name in str(value).split(",")]
            self.class_names = [name for name in self.class_names if name]

    def as_loader_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `load_image_text_dataset` (only this class's fields, also from a subclass)."""
        kwargs = {option.name: getattr(self, option.name) for option in fields(LoaderArguments)}
        kwargs["seed"] = kwargs.pop("demo_seed")  # the loader's name; `--seed` is the Trainer's in train.py
        return kwargs

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> LoaderArguments:
        """The options parsed into `namespace` by a parser built with `HfArgumentParser(LoaderArguments)` (or with it
        as a parent), for commands that keep their own positional and extra arguments beside these."""
        return cls(**{option.name: getattr(namespace, option.name) for option in fields(cls) if option.init})
