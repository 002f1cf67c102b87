"""Data layer of mmfusion: image+text classification data as `datasets.DatasetDict`s.

Every source gives a `DatasetDict` with the columns `id` (string), `image` (`datasets.Image`, decoding to an RGB
`PIL.Image` with EXIF rotation applied), `text` (string, possibly empty) and `label` (`ClassLabel`, -1 = unlabeled).

One entry point, `load_image_text_dataset(source, **options)` (`sources.py`), dispatches to

- `load_demo_dataset` for `"demo"` (synthetic, generated locally; see `mmfusion.data.demo` for the rule),
- `load_hateful_memes` for a Hateful Memes folder (`img/` + `train.jsonl`, `dev_seen.jsonl`, ...),
- `load_meme_dataset` for the other meme benchmarks' folders as downloaded (MAMI, HarMeme, Memotion 7k, MultiOFF,
  MMHS150K, PrideMM: `meme_datasets.py`, one table of tasks per dataset; `task=` picks the label set),
- `load_image_text_files` for `.jsonl`/`.csv`/`.tsv` files (one per split) with configurable column names,
- `from_dataset` for an existing `datasets.Dataset`/`DatasetDict`, and for a Hub dataset name (`load_dataset`).

Every row goes through one `RowChecker` (`rows.py`). Bad rows raise `BadRowError` (file, line, id) unless
`on_bad_rows="skip"`, which skips them and reports them (warning + `LoadReport`, `errors.py`); the report also lists
evaluation rows that are in train too (`LoadReport.overlap`). File-based loads are cached by `datasets`, keyed on a
signature of the input files, so edited inputs are rebuilt.

The options the loaders share (column names, class order, `on_bad_rows`, ...) are declared once, with their defaults
and help, in `LoaderArguments` (`options.py`); every command that loads data parses that dataclass.

To look at data: `describe(dataset_dict)`, `save_grid(dataset, "grid.png")`, or the `mmfusion-data` CLI (`cli.py`).
"""

from .cli import describe, grid_pixel_size, save_grid
from .demo import (
    DEMO_CLASS_NAMES,
    DEMO_SPLIT_SIZES,
    default_demo_root,
    demo_cue_box,
    demo_cues,
    demo_rule,
    load_demo_dataset,
    make_demo_folder,
)
from .errors import BadRowError, LoadReport
from .files import ImageTextBuilder, ImageTextConfig, ImageTextFiles, ImageTextFilesConfig, load_image_text_files
from .hateful_memes import HATEFUL_MEMES_CLASS_NAMES, HatefulMemes, load_hateful_memes
from .images import DEFAULT_MAX_IMAGE_PIXELS
from .in_memory import from_dataset
from .meme_datasets import LAYOUTS, MemeBenchmark, Task, detect_layout, load_meme_dataset
from .options import LoaderArguments
from .rows import image_text_features, train_eval_overlap
from .sources import detect_kind, is_hub_name, load_image_text_dataset

__all__ = [
    "BadRowError",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEMO_CLASS_NAMES",
    "DEMO_SPLIT_SIZES",
    "HATEFUL_MEMES_CLASS_NAMES",
    "HatefulMemes",
    "LAYOUTS",
    "MemeBenchmark",
    "Task",
    "ImageTextBuilder",
    "ImageTextConfig",
    "ImageTextFiles",
    "ImageTextFilesConfig",
    "LoadReport",
    "LoaderArguments",
    "default_demo_root",
    "demo_cue_box",
    "demo_cues",
    "demo_rule",
    "describe",
    "detect_kind",
    "detect_layout",
    "from_dataset",
    "grid_pixel_size",
    "image_text_features",
    "is_hub_name",
    "load_demo_dataset",
    "load_hateful_memes",
    "load_image_text_dataset",
    "load_image_text_files",
    "load_meme_dataset",
    "make_demo_folder",
    "save_grid",
    "train_eval_overlap",
]
