"""Hateful Memes layout: quirks of the real files, caching and cache invalidation, bad rows and the load report."""

import json
import logging
import os

import pytest
from data_files import write_image, write_jsonl
from PIL import Image

from mmfusion.data import BadRowError, HatefulMemes, LoadReport, load_hateful_memes, load_image_text_dataset


@pytest.fixture
def memes_dir(tmp_path):
    """A small folder in the official layout, with the quirks of the real release."""
    root = tmp_path / "hateful_memes"
    write_image(root / "img" / "01235.png", size=(30, 20), color=(250, 0, 0))
    write_image(root / "img" / "42953.png", size=(20, 30), color=(0, 250, 0))
    write_image(root / "img" / "00007.png", size=(10, 10), color=(0, 0, 250))
    write_image(root / "img" / "00008.png", size=(12, 12), color=128, mode="L")
    write_image(root / "img" / "00009.png", size=(14, 14), color=(10, 20, 30))
    write_jsonl(
        root / "train.jsonl",
        [
            {"id": "01235", "img": "img/01235.png", "label": 1, "text": "a hateful caption"},
            {"id": 42953, "img": "/img/42953.png", "label": 0, "text": "its their character not their color"},
            {"id": "00007", "img": "00007.png", "label": 0, "text": ""},  # bare name, empty caption
        ],
    )
    write_jsonl(root / "dev_seen.jsonl", [{"id": "00008", "img": "img/00008.png", "label": 1, "text": "grey"}])
    # The unseen test file of the release has no labels at all.
    write_jsonl(root / "test_unseen.jsonl", [{"id": "00009", "img": "img/00009.png", "text": "no label here"}])
    return root


def test_official_layout_with_quirks(memes_dir, tmp_path):
    dataset, report = load_hateful_memes(memes_dir, cache_dir=tmp_path / "cache", return_report=True)

    assert list(dataset) == ["train", "dev_seen", "test_unseen"]  # only the files that exist, named by stem
    train = dataset["train"]
    assert train.features["label"].names == ["not_hateful", "hateful"]
    assert train["id"] == ["01235", "42953", "00007"]  # leading zeros kept, int id made a string
    assert train["label"] == [1, 0, 0]
    assert train["text"][2] == ""
    sizes = [(example["image"].mode, example["image"].size) for example in train]
    assert sizes == [("RGB", (30, 20)), ("RGB", (20, 30)), ("RGB", (10, 10))]
    assert train[1]["image"].getpixel((5, 5)) == (0, 250, 0)

    grey = dataset["dev_seen"][0]["image"]
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (128, 128, 128)

    assert dataset["test_unseen"]["label"] == [-1]
    assert dataset["test_unseen"]["id"] == ["00009"]

    assert report.splits["train"].num_empty_text == 1
    assert report.splits["test_unseen"].num_unlabeled == 1
    assert report.splits["dev_seen"].num_images_converted == 1  # the L image is stored as normalised RGB PNG
    assert report.num_skipped == 0
    assert os.path.isfile(report.path)


def test_phase1_file_names_and_entry_point(tmp_path):
    root = tmp_path / "phase1"
    write_image(root / "img" / "00001.png")
    write_image(root / "img" / "00002.png")
    write_jsonl(root / "dev.jsonl", [{"id": 1, "img": "img/00001.png", "label": 1, "text": "x"}])
    write_jsonl(root / "test.jsonl", [{"id": 2, "img": "img/00002.png", "text": "y"}])

    dataset = load_image_text_dataset(root, cache_dir=tmp_path / "cache")  # auto-detected layout

    assert list(dataset) == ["dev", "test"]
    assert dataset["dev"]["id"] == ["1"] and dataset["test"]["label"] == [-1]


def test_builder_used_directly_and_second_load_hits_cache(memes_dir, tmp_path):
    cache_dir = str(tmp_path / "cache")
    builder = HatefulMemes(data_dir=str(memes_dir), cache_dir=cache_dir)
    builder.download_and_prepare()
    first = builder.as_dataset()
    arrow_file = first["train"].cache_files[0]["filename"]
    built_at = os.stat(arrow_file).st_mtime_ns

    second = load_hateful_memes(memes_dir, cache_dir=cache_dir)

    assert second["train"]._fingerprint == first["train"]._fingerprint
    assert second["train"].cache_files == first["train"].cache_files
    assert os.stat(arrow_file).st_mtime_ns == built_at  # not regenerated
    assert second["train"]["id"] == first["train"]["id"]


def test_changed_image_or_jsonl_invalidates_cache(memes_dir, tmp_path):
    cache_dir = tmp_path / "cache"
    before = load_hateful_memes(memes_dir, cache_dir=cache_dir)["train"]
    assert before[0]["image"].getpixel((0, 0)) == (250, 0, 0)

    write_image(memes_dir / "img" / "01235.png", size=(30, 20), color=(0, 0, 255))  # same size, new pixels
    os.utime(memes_dir / "img" / "01235.png", ns=(1, 1))  # make sure the mtime differs even on coarse clocks
    after_image = load_hateful_memes(memes_dir, cache_dir=cache_dir)["train"]

    assert after_image._fingerprint != before._fingerprint
    assert after_image.cache_files != before.cache_files
    assert after_image[0]["image"].getpixel((0, 0)) == (0, 0, 255)

    rows = [json.loads(line) for line in open(memes_dir / "train.jsonl")]
    rows[0]["text"] = "an edited caption"
    write_jsonl(memes_dir / "train.jsonl", rows)
    after_text = load_hateful_memes(memes_dir, cache_dir=cache_dir)["train"]

    assert after_text._fingerprint not in (before._fingerprint, after_image._fingerprint)
    assert after_text[0]["text"] == "an edited caption"


# ---------------------------------------------------------------------------------------------------------------
# Bad rows: one test per kind, in error mode (the default) and in skip mode.


def _folder_with_bad_row(tmp_path, bad_row, extra_files=None):
    root = tmp_path / "bad"
    write_image(root / "img" / "00001.png")
    for name, content in (extra_files or {}).items():
        os.makedirs(root / "img", exist_ok=True)
        if isinstance(content, bytes):
            (root / "img" / name).write_bytes(content)
        else:
            content.save(root / "img" / name)
    write_jsonl(
        root / "train.jsonl",
        [{"id": "00001", "img": "img/00001.png", "label": 0, "text": "fine"}, bad_row],
    )
    return root


def _assert_bad_row(error, root, line, row_id, reason_fragment):
    assert isinstance(error, ValueError)
    assert error.file == str(root / "train.jsonl")
    assert error.line == line
    assert error.id == row_id
    message = str(error)
    assert str(root / "train.jsonl") in message and f"line {line}" in message and repr(row_id) in message
    assert reason_fragment in message


@pytest.mark.parametrize(
    "bad_row, extra_files, reason",
    [
        pytest.param(
            {"id": "00002", "img": "img/00002.png", "label": 1, "text": "where is it"},
            None,
            "image file not found",
            id="missing-image",
        ),
        pytest.param(
            {"id": "00002", "img": "img/00002.png", "label": 1, "text": "corrupt"},
            {"00002.png": b"this is not a png file"},
            "cannot read image",
            id="corrupt-image",
        ),
        pytest.param(
            {"id": "00002", "img": "img/00002.png", "label": 1},
            None,
            "missing required field 'text'",
            id="missing-text",
        ),
        pytest.param(
            {"id": "00002", "label": 1, "text": "no image field"},
            None,
            "missing required field 'img'",
            id="missing-img",
        ),
        pytest.param(
            {"id": "00002", "img": "img/00001.png", "text": "no label in a labeled split"},
            None,
            "missing required field 'label'",
            id="missing-label",
        ),
        pytest.param(
            {"id": "00002", "img": "img/00001.png", "label": 2, "text": "three classes?"},
            None,
            "not in the class set",
            id="label-outside-classes",
        ),
        pytest.param(
            '{"id": "00002", "img": "img/00001.png", "label": 1, "text": "unterminated"',
            None,
            "malformed JSON line",
            id="malformed-json",
        ),
    ],
)
def test_bad_row_raises_with_file_line_and_id(tmp_path, bad_row, extra_files, reason):
    root = _folder_with_bad_row(tmp_path, bad_row, extra_files)

    with pytest.raises(BadRowError) as info:
        load_hateful_memes(root, cache_dir=tmp_path / "cache")

    _assert_bad_row(info.value, root, line=2, row_id="00002", reason_fragment=reason)


def test_truncated_image_is_a_bad_row(tmp_path):
    image = Image.effect_noise((64, 64), 50).convert("RGB")
    path = tmp_path / "full.png"
    image.save(path)
    truncated = path.read_bytes()[: os.path.getsize(path) // 2]
    root = _folder_with_bad_row(
        tmp_path,
        {"id": "00002", "img": "img/00002.png", "label": 1, "text": "half a file"},
        {"00002.png": truncated},
    )

    with pytest.raises(BadRowError) as info:
        load_hateful_memes(root, cache_dir=tmp_path / "cache")

    _assert_bad_row(info.value, root, line=2, row_id="00002", reason_fragment="cannot read image")


def test_decompression_bomb_guard(tmp_path):
    root = _folder_with_bad_row(
        tmp_path,
        {"id": "00002", "img": "img/00002.png", "label": 1, "text": "huge"},
        {"00002.png": Image.new("RGB", (200, 200))},
    )

    with pytest.raises(BadRowError) as info:
        load_hateful_memes(root, cache_dir=tmp_path / "cache", max_image_pixels=10_000)

    _assert_bad_row(info.value, root, line=2, row_id="00002", reason_fragment="decompression-bomb")
    assert str(root / "img" / "00002.png") in str(info.value)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL warns; the row must fail too
def test_pil_decompression_bomb_warning_becomes_error(tmp_path, monkeypatch):
    root = _folder_with_bad_row(
        tmp_path,
        {"id": "00002", "img": "img/00002.png", "label": 1, "text": "huge"},
        {"00002.png": Image.new("RGB", (200, 200))},
    )
    # 40_000 pixels is between 1x and 2x PIL's limit: PIL itself would only warn and then decode the image.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30_000)

    with pytest.raises(BadRowError) as info:
        load_hateful_memes(root, cache_dir=tmp_path / "cache")

    _assert_bad_row(info.value, root, line=2, row_id="00002", reason_fragment="decompression-bomb")
    assert str(root / "img" / "00002.png") in str(info.value)


def test_skip_mode_reports_exactly_the_bad_ids(tmp_path, caplog):
    root = tmp_path / "skip"
    for name in ("00001", "00002", "00003"):
        write_image(root / "img" / f"{name}.png")
    (root / "img" / "00005.png").write_bytes(b"garbage")
    write_jsonl(
        root / "train.jsonl",
        [
            {"id": "00001", "img": "img/00001.png", "label": 0, "text": "good"},
            {"id": "00004", "img": "img/00004.png", "label": 1, "text": "missing image"},
            {"id": "00005", "img": "img/00005.png", "label": 1, "text": "corrupt image"},
            '{"id": "00006", "img": broken json',
            {"id": "00002", "img": "img/00002.png", "label": 1, "text": ""},
            {"id": "00007", "img": "img/00002.png", "label": 5, "text": "bad label"},
            {"id": "00008", "img": "img/00002.png", "label": 1},
        ],
    )
    write_jsonl(root / "dev_seen.jsonl", [{"id": "00003", "img": "img/00003.png", "label": 0, "text": "ok"}])
    report_path = tmp_path / "reports" / "skipped.json"

    with caplog.at_level(logging.WARNING, logger="mmfusion.data"):
        dataset, report = load_hateful_memes(
            root, cache_dir=tmp_path / "cache", on_bad_rows="skip", report_path=report_path, return_report=True
        )

    bad_ids = ["00004", "00005", "00006", "00007", "00008"]
    assert dataset["train"]["id"] == ["00001", "00002"]
    assert dataset["dev_seen"]["id"] == ["00003"]
    assert report.skipped_ids == bad_ids
    assert [row["line"] for row in report.skipped] == [2, 3, 4, 6, 7]
    assert report.splits["train"].num_empty_text == 1
    saved = json.loads(report_path.read_text())
    assert [row["id"] for row in saved["splits"]["train"]["skipped"]] == bad_ids
    assert saved["num_skipped"] == 5
    warning = "\n".join(record.getMessage() for record in caplog.records if record.levelno == logging.WARNING)
    assert "Skipped 5 bad row(s)" in warning and str(report_path) in warning
    assert all(repr(bad_id) in warning for bad_id in bad_ids)

    # From the cache: same rows, and the report is still there (stored next to the cached Arrow files).
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mmfusion.data"):
        cached, cached_report = load_hateful_memes(
            root, cache_dir=tmp_path / "cache", on_bad_rows="skip", return_report=True
        )
    assert cached["train"].cache_files == dataset["train"].cache_files
    assert cached_report.skipped_ids == bad_ids
    assert os.path.dirname(cached_report.path) == os.path.dirname(cached["train"].cache_files[0]["filename"])
    assert LoadReport.load(cached_report.path).skipped_ids == bad_ids
    assert any("Skipped 5 bad row(s)" in record.getMessage() for record in caplog.records)


def test_rows_checked_in_threads_keep_file_order(tmp_path):
    """Images are decoded by several threads at once; examples, skipped rows and the first error stay in file order."""
    root = tmp_path / "many"
    (root / "img").mkdir(parents=True)
    rows = []
    for index in range(150):  # more than two of the builder's chunks
        name = f"{index:05d}"
        if index % 7 == 0:  # slow to decode: a later, small image finishes first
            Image.effect_noise((300, 300), 60).convert("RGB").save(root / "img" / f"{name}.png")
        else:
            write_image(root / "img" / f"{name}.png", size=(8, 8), color=(index, 0, 0))
        rows.append({"id": name, "img": f"img/{name}.png", "label": index % 2, "text": f"caption {index}"})
    bad_lines = [10, 100, 141]
    for line in bad_lines:
        (root / "img" / f"{line - 1:05d}.png").write_bytes(b"not a png")
    write_jsonl(root / "train.jsonl", rows)

    with pytest.raises(BadRowError) as info:
        load_hateful_memes(root, cache_dir=tmp_path / "error-cache")
    _assert_bad_row(info.value, root, line=10, row_id="00009", reason_fragment="cannot read image")

    dataset, report = load_hateful_memes(root, cache_dir=tmp_path / "cache", on_bad_rows="skip", return_report=True)
    assert dataset["train"]["id"] == [row["id"] for line, row in enumerate(rows, 1) if line not in bad_lines]
    assert [row["line"] for row in report.skipped] == bad_lines


def test_skip_and_error_modes_are_cached_separately(tmp_path):
    root = _folder_with_bad_row(tmp_path, {"id": "00002", "img": "img/missing.png", "label": 1, "text": "x"})
    skipped = load_hateful_memes(root, cache_dir=tmp_path / "cache", on_bad_rows="skip")
    assert skipped["train"]["id"] == ["00001"]
    with pytest.raises(BadRowError):  # a cached skip-mode build must not hide the bad row in error mode
        load_hateful_memes(root, cache_dir=tmp_path / "cache")


def test_on_bad_rows_is_validated(memes_dir, tmp_path):
    with pytest.raises(ValueError, match="on_bad_rows"):
        load_hateful_memes(memes_dir, cache_dir=tmp_path / "cache", on_bad_rows="ignore")


def test_folder_without_split_files_is_rejected(tmp_path):
    (tmp_path / "empty" / "img").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="split file"):
        load_hateful_memes(tmp_path / "empty", cache_dir=tmp_path / "cache")


def test_empty_split_file_and_fully_skipped_split_give_empty_splits(tmp_path):
    root = tmp_path / "empty_splits"
    write_image(root / "img" / "00001.png")
    write_jsonl(root / "train.jsonl", [{"id": "00001", "img": "img/00001.png", "label": 0, "text": "a"}])
    (root / "dev_seen.jsonl").write_text("\n")
    write_jsonl(root / "test_seen.jsonl", [{"id": "00002", "img": "img/gone.png", "label": 1, "text": "b"}])

    dataset, report = load_hateful_memes(root, cache_dir=tmp_path / "cache", on_bad_rows="skip", return_report=True)

    assert {split: len(ds) for split, ds in dataset.items()} == {"train": 1, "dev_seen": 0, "test_seen": 0}
    assert dataset["test_seen"].features == dataset["train"].features
    assert report.skipped_ids == ["00002"]


def test_escaped_slash_and_int_id_without_its_leading_zero(tmp_path):
    root = tmp_path / "hm"
    write_image(root / "img" / "01235.png")
    # as in the release: `img\/01235.png` (JSON's escaped slash), and an int id that lost the file name's zero
    write_jsonl(root / "train.jsonl", ['{"id": 1235, "img": "img\\/01235.png", "label": 1, "text": "x"}'])
    dataset = load_image_text_dataset(root, cache_dir=tmp_path / "cache")
    assert dataset["train"]["id"] == ["1235"] and dataset["train"]["label"] == [1]
    assert dataset["train"][0]["image"].size == (24, 16)


def test_hub_copy_with_an_image_feature(tmp_path):
    import datasets

    write_image(tmp_path / "a.png")
    features = datasets.Features(
        {
            "id": datasets.Value("int64"),
            "image": datasets.Image(),
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["not_hateful", "hateful"]),
        }
    )
    hub_copy = datasets.Dataset.from_dict(
        {"id": [42953], "image": [str(tmp_path / "a.png")], "text": ["t"], "label": [1]}, features=features
    )
    dataset = load_image_text_dataset(datasets.DatasetDict({"train": hub_copy}))
    assert dataset["train"]["id"] == ["42953"] and dataset["train"].features["label"].names == [
        "not_hateful",
        "hateful",
    ]
    assert dataset["train"][0]["image"].mode == "RGB"
