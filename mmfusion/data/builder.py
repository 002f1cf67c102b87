"""Shared base of the file-based builders (`HatefulMemes`, `ImageTextFiles`).

They are ordinary `datasets.GeneratorBasedBuilder`s, cached by `datasets` as usual:

```python
builder = HatefulMemes(data_dir="path/to/hateful_memes", cache_dir="...")
builder.download_and_prepare()  # checks every row and image once; a second call is served from the cache
dataset_dict = builder.as_dataset()
```

What the base adds: every row goes through `RowChecker` (bad-row policy, image checks), each split's counts and
skipped rows are written to `load_report.json` inside the builder's cache directory, and the config carries a
signature of the input files (see `cache_signature`) so that edited inputs get a fresh cache entry.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import MISSING as MISSING_DEFAULT
from dataclasses import dataclass, fields
from functools import partial
from typing import Any

import datasets

try:
    from datasets.builder import Key
except ImportError:  # datasets < 5 takes plain int keys

    def Key(original_shard_id: int, item_or_batch_id: int) -> int:  # noqa: N802
        return item_or_batch_id


from ..parallel import image_thread_pool, ordered_map
from .features import image_text_features
from .images import DEFAULT_MAX_IMAGE_PIXELS
from .rows import RawRow, RowChecker
from .validation import (
    REPORT_FILENAME,
    BadRowError,
    LoadReport,
    SplitReport,
    check_on_bad_rows,
    find_bad_row_error,
    merge_split_reports,
    split_report_filename,
)


def _check_row(checker: RowChecker, row: RawRow) -> tuple[dict[str, Any], Any] | BadRowError:
    """The checked example and image, or the row's error as a value (it crosses the thread pool in row order)."""
    try:
        return checker.check(row)
    except BadRowError as err:
        return err


# Fields of `datasets.BuilderConfig` itself, handled by `datasets`.
_BASE_CONFIG_FIELDS = {"name", "version", "data_dir", "data_files", "description"}


@dataclass
class ImageTextConfig(datasets.BuilderConfig):
    """Config shared by the image+text builders.

    Args:
        on_bad_rows (`str`, defaults to `"error"`):
            `"error"` raises `BadRowError` at the first bad row; `"skip"` leaves bad rows out and lists them in the
            load report.
        max_image_pixels (`int`, defaults to `DEFAULT_MAX_IMAGE_PIXELS`):
            Images with more pixels are bad rows (decompression-bomb guard).
        input_signature (`str`, *optional*):
            Signature of the input files (computed by the builder when not given). Part of the cache key.
    """

    on_bad_rows: str = "error"
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    input_signature: str | None = None

    def __post_init__(self):
        super().__post_init__()
        check_on_bad_rows(self.on_bad_rows)


class ImageTextBuilder(datasets.GeneratorBasedBuilder):
    """Base builder: subclasses implement `class_names`, `describe_source`, `_split_generators` and `_read_split`."""

    BUILDER_CONFIG_CLASS = ImageTextConfig

    def __init__(self, *args, **kwargs):
        # `datasets` derives the cache directory (hence the fingerprint) from the config kwargs *as passed*, so
        # `on_bad_rows="error"` given explicitly and left to its default would be two different caches. Passing every
        # option explicitly makes the cache key depend only on the effective config.
        for config_field in fields(self.BUILDER_CONFIG_CLASS):
            if config_field.name in _BASE_CONFIG_FIELDS or not config_field.init:
                continue
            if config_field.default is not MISSING_DEFAULT:
                kwargs.setdefault(config_field.name, config_field.default)
        super().__init__(*args, **kwargs)

    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def field_names(self) -> dict[str, str]:
        """How the input names the `id`, `image`, `text` and `label` fields (used in error messages)."""
        return {}

    def describe_source(self) -> str:
        """Short description of the input, for reports."""
        raise NotImplementedError

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=f"Image+text classification data loaded by mmfusion from {self.describe_source()}",
            features=image_text_features(self.class_names),
        )

    def _read_split(self, **gen_kwargs) -> tuple[bool, Iterator[RawRow]]:
        """Return `(labeled, rows)` for one split: whether the split has labels, and its raw rows."""
        raise NotImplementedError

    def _generate_examples(self, split: str, **gen_kwargs) -> Iterator[tuple[Any, dict[str, Any]]]:
        labeled, rows = self._read_split(**gen_kwargs)
        checker = RowChecker(
            self.class_names,
            labeled=labeled,
            max_image_pixels=self.config.max_image_pixels,
            split=split,
            field_names=self.field_names,
        )
        report = SplitReport(split=split)
        # Checking a row decodes its image, most of the build's time: threads check several rows at once. Outcomes
        # come back in row order, so the first bad row is still the one reported.
        with image_thread_pool() as pool:
            for index, outcome in enumerate(ordered_map(pool, partial(_check_row, checker), rows)):
                if isinstance(outcome, BadRowError):
                    if self.config.on_bad_rows == "error":
                        raise outcome
                    report.add_skipped(outcome)
                    continue
                example, image = outcome
                report.add_example(example, image.converted)
                yield Key(0, index), example
        # `_output_dir` is the temporary build directory here; it becomes the cache directory once the build succeeds.
        report.save(os.path.join(self._output_dir, split_report_filename(split)))

    def _download_and_prepare(self, dl_manager, verification_mode, **prepare_splits_kwargs):
        super()._download_and_prepare(dl_manager, verification_mode, **prepare_splits_kwargs)
        merge_split_reports(
            self._output_dir,
            list(self.info.splits),
            source=self.describe_source(),
            on_bad_rows=self.config.on_bad_rows,
        )

    @property
    def report_path(self) -> str:
        """Where the load report of this build lives (next to the cached Arrow files)."""
        return os.path.abspath(os.path.join(self.cache_dir, REPORT_FILENAME))

    def read_load_report(self) -> LoadReport:
        """The load report of the prepared dataset (also after a load from the cache)."""
        return LoadReport.load(self.report_path)


def build_dataset_dict(
    builder: ImageTextBuilder, *, report_path: str | os.PathLike | None = None
) -> tuple[datasets.DatasetDict, LoadReport]:
    """Prepare (or reuse from the cache) a builder's dataset, and return it with its load report.

    The report is logged (a warning listing skipped ids when rows were skipped) and, when `report_path` is given,
    copied there.

    Raises:
        `BadRowError`: the first bad row, when `on_bad_rows="error"` (unwrapped from `datasets`'
            `DatasetGenerationError`, so that callers can catch it directly).
    """
    try:
        builder.download_and_prepare()
    except datasets.exceptions.DatasetGenerationError as err:
        bad_row = find_bad_row_error(err)
        if bad_row is not None:
            raise bad_row from None
        raise
    dataset_dict = datasets.DatasetDict()
    for split, split_info in builder.info.splits.items():
        if split_info.num_examples:
            dataset_dict[split] = builder.as_dataset(split=split)
        else:
            # `datasets` cannot read a split without rows back from its cache; an empty split file (or one whose
            # rows were all skipped) still gives its split, empty.
            features = builder.info.features
            dataset_dict[split] = datasets.Dataset.from_dict(
                {name: [] for name in features}, features=features, split=split
            )
    report = builder.read_load_report()
    if report_path is not None:
        report.save(report_path)
    report.log()
    return dataset_dict, report
