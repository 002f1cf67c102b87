"""Data layer of mmfusion: image+text classification data as `datasets.DatasetDict`s.

Every loader returns a `DatasetDict` with the columns `id` (string), `image` (`datasets.Image`, decoding to an RGB
`PIL.Image` with EXIF rotation applied), `text` (string, possibly empty) and `label` (`ClassLabel`, -1 = unlabeled).

Entry point: `load_image_text_dataset(source, kind="auto", **options)`, which dispatches to

- `load_demo_dataset` for `"demo"` (synthetic, generated locally; see `mmfusion.data.demo` for the rule),
- `load_hateful_memes` for a Hateful Memes folder (`img/` + `train.jsonl`, `dev_seen.jsonl`, ...),
- `load_image_text_files` for `.jsonl`/`.csv` files (one per split) with configurable column names,
- `from_dataset` for an existing `datasets.Dataset`/`DatasetDict` (e.g. from the Hub).

Every row and image is checked once, at load time. Bad rows raise `BadRowError` (file, line, id) unless
`on_bad_rows="skip"`, which skips them and reports them (warning + `LoadReport` JSON file). File-based loads are
cached by `datasets`, keyed on a signature of the input files, so edited inputs are rebuilt.

To look at data: `describe(dataset_dict)`, `save_grid(dataset, "grid.png")`, or the `mmfusion-data` CLI.
"""

from .builder import ImageTextBuilder, ImageTextConfig
from .demo import (
    DEMO_CLASS_NAMES,
    DEMO_SPLIT_SIZES,
    default_demo_root,
    demo_cues,
    demo_rule,
    load_demo_dataset,
    make_demo_folder,
)
from .features import image_text_features
from .generic import ImageTextFiles, ImageTextFilesConfig, load_image_text_files
from .grid import grid_pixel_size, save_grid
from .hateful_memes import HATEFUL_MEMES_CLASS_NAMES, HatefulMemes, load_hateful_memes
from .images import DEFAULT_MAX_IMAGE_PIXELS
from .in_memory import from_dataset
from .loading import detect_kind, load_image_text_dataset
from .summary import describe
from .validation import BadRowError, LoadReport

__all__ = [
    "BadRowError",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEMO_CLASS_NAMES",
    "DEMO_SPLIT_SIZES",
    "HATEFUL_MEMES_CLASS_NAMES",
    "HatefulMemes",
    "ImageTextBuilder",
    "ImageTextConfig",
    "ImageTextFiles",
    "ImageTextFilesConfig",
    "LoadReport",
    "default_demo_root",
    "demo_cues",
    "demo_rule",
    "describe",
    "detect_kind",
    "from_dataset",
    "grid_pixel_size",
    "image_text_features",
    "load_demo_dataset",
    "load_hateful_memes",
    "load_image_text_dataset",
    "load_image_text_files",
    "make_demo_folder",
    "save_grid",
]
