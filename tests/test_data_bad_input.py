"""Bad input through the public entry points (loader and `mmfusion-data` in a subprocess): each named clearly.

One test per kind of bad input: non-UTF-8 bytes, repeated ids, rows shared by train and an evaluation split, a
label column that is not there, image paths leaving the dataset folder, decompression bombs; and Hub names reaching
the one dispatch.
"""

import logging
import os
import subprocess
import sys

import datasets
import pytest
from data_files import write_image, write_jsonl
from PIL import Image

from mmfusion.data import BadRowError, load_hateful_memes, load_image_text_dataset


def run_cli(*args):
    """`mmfusion-data` in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "mmfusion.data.cli", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def write_bytes_lines(path, lines):
    path.write_bytes(b"".join(line + b"\n" for line in lines))


@pytest.fixture
def posts(tmp_path):
    """A folder with three images, for hand-written split files."""
    root = tmp_path / "posts"
    for i in range(3):
        write_image(root / "img" / f"{i}.png", color=(60 * i, 10, 10))
    return root


# ---------------------------------------------------------------------------------------------------------------
# Non-UTF-8 bytes


def _cp1252_jsonl(root):
    path = root / "train.jsonl"
    write_bytes_lines(
        path,
        [
            b'{"id": "a", "image": "img/0.png", "text": "fine", "label": "x"}',
            '{"id": "b", "image": "img/1.png", "text": "caf\u00e9", "label": "y"}'.encode("cp1252"),
            b'{"id": "c", "image": "img/2.png", "text": "also fine", "label": "x"}',
        ],
    )
    return path


def test_non_utf8_jsonl_line_names_file_line_and_id(posts, tmp_path):
    path = _cp1252_jsonl(posts)
    with pytest.raises(BadRowError) as info:
        load_image_text_dataset(path, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert str(path) in message and "line 2" in message and "id 'b'" in message
    assert "not valid utf-8" in message and "0xE9" in message and "encoding=" in message

    dataset, report = load_image_text_dataset(
        path, cache_dir=tmp_path / "cache", on_bad_rows="skip", return_report=True
    )
    assert dataset["train"]["id"] == ["a", "c"]
    assert [(row["line"], row["id"]) for row in report.skipped] == [(2, "b")]

    whole_file = posts / "latin.jsonl"
    write_bytes_lines(
        whole_file,
        [
            '{"id": "a", "image": "img/0.png", "text": "caf\u00e9", "label": "x"}'.encode("cp1252"),
            '{"id": "b", "image": "img/1.png", "text": "na\u00efve", "label": "y"}'.encode("cp1252"),
        ],
    )
    latin = load_image_text_dataset(whole_file, cache_dir=tmp_path / "cache", encoding="cp1252")["train"]
    assert latin["text"] == ["caf\u00e9", "na\u00efve"]


def test_non_utf8_csv_row_through_the_cli(posts, tmp_path):
    path = posts / "train.csv"
    write_bytes_lines(
        path,
        [
            b"id,image,text,label",
            b"a,img/0.png,fine,x",
            "b,img/1.png,caf\u00e9,y".encode("cp1252"),
            b"c,img/2.png,ok,x",
        ],
    )
    failed = run_cli("stats", path, "--cache-dir", tmp_path / "cache")
    assert failed.returncode == 1
    assert str(path) in failed.stderr and "line 3" in failed.stderr and "id 'b'" in failed.stderr
    assert "UnicodeDecodeError" not in failed.stderr

    skipped = run_cli("stats", path, "--cache-dir", tmp_path / "cache", "--on-bad-rows", "skip")
    assert skipped.returncode == 0, skipped.stderr
    assert "train: 2 rows" in skipped.stdout and "skipped 1 bad row" in skipped.stdout
    assert "'b'" in skipped.stderr  # the warning names the skipped id

    latin = load_image_text_dataset(path, cache_dir=tmp_path / "cache", encoding="cp1252")["train"]
    assert latin["text"] == ["fine", "caf\u00e9", "ok"]


# ---------------------------------------------------------------------------------------------------------------
# Repeated ids in one split


def test_duplicate_id_names_the_id_and_both_lines(posts, tmp_path):
    rows = [
        {"id": "a", "image": "img/0.png", "text": "first", "label": "x"},
        {"id": "b", "image": "img/1.png", "text": "other", "label": "y"},
        {"id": "a", "image": "img/2.png", "text": "again", "label": "y"},
        {"id": "a", "image": "img/2.png", "text": "and again", "label": "x"},
    ]
    write_jsonl(posts / "train.jsonl", rows)
    with pytest.raises(BadRowError) as info:
        load_image_text_dataset(posts / "train.jsonl", cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert str(posts / "train.jsonl") in message and "line 3" in message and "first on line 1" in message
    assert "duplicate id 'a'" in message

    dataset, report = load_image_text_dataset(
        posts / "train.jsonl", cache_dir=tmp_path / "cache", on_bad_rows="skip", return_report=True
    )
    assert dataset["train"]["text"] == ["first", "other"]  # the first is kept
    assert [(row["line"], row["id"]) for row in report.skipped] == [(3, "a"), (4, "a")]


def test_duplicate_id_in_a_datasets_object_names_both_rows(posts):
    source = datasets.Dataset.from_dict(
        {"id": ["a", "a"], "image": [str(posts / "img" / "0.png")] * 2, "text": ["x", "y"], "label": [0, 1]}
    )
    with pytest.raises(BadRowError, match=r"row 1, id 'a': duplicate id 'a', first on row 0"):
        load_image_text_dataset(source, base_dir=posts)


# ---------------------------------------------------------------------------------------------------------------
# The same rows in train and an evaluation split


def test_train_evaluation_overlap_is_reported(posts, tmp_path, caplog):
    shared = {"id": "s", "image": "img/0.png", "text": "seen in training", "label": "x"}
    write_jsonl(posts / "train.jsonl", [shared, {"id": "t", "image": "img/1.png", "text": "t", "label": "y"}])
    write_jsonl(
        posts / "dev.jsonl",
        [
            shared,
            {"id": "t", "image": "img/1.png", "text": "same id, other text: not the same row", "label": "y"},
            {"id": "d", "image": "img/2.png", "text": "new", "label": "x"},
        ],
    )
    files = {"train": posts / "train.jsonl", "validation": posts / "dev.jsonl"}
    with caplog.at_level(logging.WARNING, logger="mmfusion.data"):
        dataset, report = load_image_text_dataset(files, cache_dir=tmp_path / "cache", return_report=True)
    assert len(dataset["validation"]) == 3  # nothing dropped: a warning, not an error
    assert report.overlap == {"validation": ["s"]} and report.num_overlap == 1
    assert any("1 evaluation rows also in train" in record.getMessage() for record in caplog.records)

    _, alone = load_image_text_dataset(posts / "dev.jsonl", cache_dir=tmp_path / "cache", return_report=True)
    assert alone.overlap == {} and alone.overlap_warnings() == []


def test_overlap_in_a_hateful_memes_folder_through_the_cli(posts, tmp_path):
    row = {"id": "01", "img": "img/0.png", "text": "same", "label": 1}
    write_jsonl(posts / "train.jsonl", [row])
    write_jsonl(posts / "dev_seen.jsonl", [row, {"id": "02", "img": "img/1.png", "text": "new", "label": 0}])
    stats = run_cli("stats", posts, "--cache-dir", tmp_path / "cache")
    assert stats.returncode == 0, stats.stderr
    assert "warning: 1 evaluation rows also in train (split 'dev_seen'" in stats.stdout and "'01'" in stats.stdout


# ---------------------------------------------------------------------------------------------------------------
# A label column that no row has


def test_label_column_typo_lists_the_columns(posts, tmp_path):
    write_jsonl(posts / "train.jsonl", [{"id": "a", "image": "img/0.png", "text": "t", "label": "x"}])
    with pytest.raises(BadRowError) as info:
        load_image_text_dataset(posts / "train.jsonl", label_column="sentiment", class_names=["x", "y"])
    message = str(info.value)
    assert str(posts / "train.jsonl") in message and "no column 'sentiment'" in message
    assert "['id', 'image', 'label', 'text']" in message

    cli = run_cli("stats", posts / "train.jsonl", "--label-column", "sentiment", "--cache-dir", tmp_path / "cache")
    assert cli.returncode == 1 and "no column 'sentiment'" in cli.stderr and str(posts / "train.jsonl") in cli.stderr

    in_memory = datasets.Dataset.from_dict({"image": [str(posts / "img" / "0.png")], "text": ["t"], "label": [0]})
    with pytest.raises(BadRowError, match=r"no column 'sentiment' \(columns of split 'train': \['image'"):
        load_image_text_dataset(in_memory, label_column="sentiment", class_names=["x"], base_dir=posts)


def test_unlabeled_test_file_is_still_fine(posts, tmp_path):
    write_jsonl(posts / "train.jsonl", [{"id": "a", "image": "img/0.png", "text": "t", "label": "x"}])
    write_jsonl(posts / "test.jsonl", [{"id": "b", "image": "img/1.png", "text": "t"}])
    dataset = load_image_text_dataset(
        train_file=posts / "train.jsonl", test_file=posts / "test.jsonl", cache_dir=tmp_path / "cache"
    )
    assert list(dataset) == ["train", "test"] and dataset["test"]["label"] == [-1]


# ---------------------------------------------------------------------------------------------------------------
# Image paths leaving the dataset folder


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_image_outside_the_dataset_folder_is_refused(tmp_path, kind):
    root = tmp_path / "data"
    write_image(root / "img" / "inside.png")
    write_image(tmp_path / "secret.png", color=(1, 2, 3))
    image = {"dotdot": "img/../../secret.png", "absolute": str(tmp_path / "secret.png"), "symlink": "img/link.png"}[
        kind
    ]
    if kind == "symlink":
        os.symlink(tmp_path / "secret.png", root / "img" / "link.png")
    rows = [
        {"id": "ok", "img": "img/inside.png", "text": "t", "label": 0},
        {"id": "out", "img": image, "text": "t", "label": 1},
    ]
    write_jsonl(root / "train.jsonl", rows)

    with pytest.raises(BadRowError) as info:
        load_hateful_memes(root, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert str(root / "train.jsonl") in message and "line 2" in message and "id 'out'" in message
    assert "outside the dataset folder" in message and "allow_outside_images=True" in message

    allowed = load_hateful_memes(root, cache_dir=tmp_path / "cache", allow_outside_images=True)["train"]
    assert allowed[1]["image"].getpixel((0, 0)) == (1, 2, 3)

    if kind == "symlink":  # the CLI once (a subprocess costs seconds of imports)
        refused = run_cli("stats", root, "--cache-dir", tmp_path / "cache")
        assert (
            refused.returncode == 1 and "outside the dataset folder" in refused.stderr and "id 'out'" in refused.stderr
        )
        flag = run_cli("stats", root, "--cache-dir", tmp_path / "cache", "--allow-outside-images")
        assert flag.returncode == 0 and "train: 2 rows" in flag.stdout


def test_csv_image_path_outside_its_folder(posts, tmp_path):
    write_image(tmp_path / "elsewhere.png")
    (posts / "train.csv").write_text("id,image,text,label\na,img/0.png,t,x\nb,../elsewhere.png,t,y\n")
    with pytest.raises(BadRowError, match=r"line 3, id 'b': image path resolves to .*outside the dataset folder"):
        load_image_text_dataset(posts / "train.csv", cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------------------------------------------------------
# Decompression bombs: the message quotes our limit and its option


def test_bomb_message_quotes_max_image_pixels(posts, tmp_path):
    write_image(posts / "img" / "big.png", size=(200, 200))
    write_jsonl(posts / "train.jsonl", [{"id": "big", "image": "img/big.png", "text": "t", "label": "x"}])
    with pytest.raises(BadRowError) as info:
        load_image_text_dataset(posts / "train.jsonl", cache_dir=tmp_path / "cache", max_image_pixels=10_000)
    message = str(info.value)
    assert "line 1" in message and "id 'big'" in message
    assert "max_image_pixels=10000" in message and "PIL" not in message


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bomb_refused_inside_pil_still_quotes_our_limit(posts, tmp_path, monkeypatch):
    # Above 2x PIL's limit, PIL refuses the file inside Image.open, before we see its size.
    write_image(posts / "img" / "big.png", size=(200, 200))
    write_jsonl(posts / "train.jsonl", [{"id": "big", "image": "img/big.png", "text": "t", "label": "x"}])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(BadRowError) as info:
        load_image_text_dataset(posts / "train.jsonl", cache_dir=tmp_path / "cache", max_image_pixels=15_000)
    assert "40000 pixels, more than the limit of max_image_pixels=15000" in str(info.value)
    assert "Image size" not in str(info.value)  # not PIL's own wording


# ---------------------------------------------------------------------------------------------------------------
# Hub datasets go through the same dispatch (and keep id_column)


def test_hub_dataset_repository_keeps_id_column(posts, tmp_path):
    # A dataset repository as the Hub stores it (parquet with an Image feature), loaded by `datasets.load_dataset`:
    # the same code path as `load_image_text_dataset("org/name")`, without the network.
    repo = tmp_path / "repo"
    features = datasets.Features(
        {"meme_id": datasets.Value("string"), "img": datasets.Image(), "caption": datasets.Value("string"),
         "label": datasets.ClassLabel(names=["no", "yes"])}
    )  # fmt: skip
    for split, ids in (("train", ["m1", "m2"]), ("test", ["m3"])):
        split_data = datasets.Dataset.from_dict(
            {"meme_id": ids, "img": [str(posts / "img" / f"{i}.png") for i in range(len(ids))],
             "caption": [f"c {i}" for i in ids], "label": [1, 0][: len(ids)]},
            features=features,
        )  # fmt: skip
        split_data.to_parquet(str(repo / "data" / f"{split}-00000-of-00001.parquet"))

    dataset = load_image_text_dataset(
        str(repo), kind="hub", id_column="meme_id", image_column="img", text_column="caption",
        cache_dir=tmp_path / "cache",
    )  # fmt: skip
    assert dataset["train"]["id"] == ["m1", "m2"] and dataset["test"]["id"] == ["m3"]
    assert dataset["train"].features["label"].names == ["no", "yes"]


def test_hub_name_reaches_the_hub_from_every_entry_point(tmp_path, monkeypatch):
    # Offline, so that the test is quick and the same everywhere: the error proves the name went to the Hub.
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # read at import: set the libraries' own flags
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # for the subprocess
    with pytest.raises(FileNotFoundError, match="could not be loaded as a Hugging Face Hub dataset"):
        load_image_text_dataset("mmfusion-tests/no-such-dataset", cache_dir=tmp_path / "cache")
    cli = run_cli("stats", "mmfusion-tests/no-such-dataset", "--cache-dir", tmp_path / "cache")
    assert cli.returncode == 1 and "Hugging Face Hub dataset" in cli.stderr


def test_options_a_source_does_not_use(posts, tmp_path):
    write_jsonl(posts / "train.jsonl", [{"id": "1", "img": "img/0.png", "text": "t", "label": 0}])
    # Defaults are accepted (callers pass every option), other values are refused rather than ignored.
    dataset = load_image_text_dataset(posts, image_column="image", id_column="id", seed=0, cache_dir=tmp_path / "c")
    assert dataset["train"]["id"] == ["1"]
    with pytest.raises(TypeError, match="text_column='caption' does not apply to a Hateful Memes folder"):
        load_image_text_dataset(posts, text_column="caption")
