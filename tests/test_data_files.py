"""Generic JSONL/CSV files, in-memory `datasets` objects, and the `load_image_text_dataset` dispatcher."""

import csv
import json
import logging

import datasets
import pytest
from data_files import write_image, write_jsonl
from PIL import Image

from mmfusion.data import (
    BadRowError,
    detect_kind,
    from_dataset,
    load_image_text_dataset,
    load_image_text_files,
)

COLORS = {"negative": (200, 0, 0), "neutral": (0, 200, 0), "positive": (0, 0, 200)}


def write_csv(path, header, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def sentiment_jsonl(tmp_path):
    """Three string classes, image paths relative to the file, custom column names."""
    data = tmp_path / "sentiment"
    rows = []
    for i, sentiment in enumerate(["positive", "negative", "neutral", "positive", "negative"]):
        write_image(data / "pics" / f"{i}.png", color=COLORS[sentiment])
        rows.append({"post_id": f"p{i:03d}", "photo": f"pics/{i}.png", "caption": f"post {i}", "sentiment": sentiment})
    write_jsonl(data / "posts.jsonl", rows)
    return data / "posts.jsonl"


def test_jsonl_with_three_string_classes_and_user_order(sentiment_jsonl, tmp_path):
    options = dict(id_column="post_id", image_column="photo", text_column="caption", label_column="sentiment")

    dataset = load_image_text_files(
        sentiment_jsonl, class_names=["positive", "neutral", "negative"], cache_dir=tmp_path / "cache", **options
    )

    train = dataset["train"]
    assert list(dataset) == ["train"]
    assert train.column_names == ["id", "image", "text", "label"]
    assert train.features["label"].names == ["positive", "neutral", "negative"]
    assert train["id"] == ["p000", "p001", "p002", "p003", "p004"]
    assert train["label"] == [0, 2, 1, 0, 2]
    assert train[1]["image"].getpixel((0, 0)) == COLORS["negative"]
    assert train["text"][4] == "post 4"

    default_order = load_image_text_files(sentiment_jsonl, cache_dir=tmp_path / "cache", **options)["train"]
    assert default_order.features["label"].names == ["negative", "neutral", "positive"]  # sorted
    assert default_order["label"] == [2, 0, 1, 2, 0]
    assert default_order._fingerprint != train._fingerprint  # class order is part of the cache key


def test_csv_one_file_per_split_with_int_labels_and_row_number_ids(tmp_path):
    data = tmp_path / "csvdata"
    for name in ("a", "b", "c"):
        write_image(data / "images" / f"{name}.png")
    write_csv(
        data / "train.csv",
        ["image", "text", "label"],
        [["images/a.png", "hello, world", "2"], ["images/b.png", "", "0"]],
    )
    write_csv(data / "val.csv", ["image", "text", "label"], [["images/c.png", "multi\nline caption", "1"]])
    write_csv(data / "test.csv", ["image", "text"], [[str(data / "images" / "a.png"), "absolute path, no label"]])

    dataset, report = load_image_text_dataset(
        {"train": data / "train.csv", "validation": data / "val.csv", "test": data / "test.csv"},
        cache_dir=tmp_path / "cache",
        return_report=True,
    )

    assert list(dataset) == ["train", "validation", "test"]
    assert dataset["train"].features["label"].names == ["0", "1", "2"]  # range of the int labels
    assert dataset["train"]["id"] == ["0", "1"]  # no id column: row number as string
    assert dataset["train"]["label"] == [2, 0]
    assert dataset["train"]["text"] == ["hello, world", ""]
    assert dataset["validation"]["text"] == ["multi\nline caption"]
    assert dataset["test"]["label"] == [-1]  # file without a label column: unlabeled split
    assert report.splits["train"].num_empty_text == 1
    assert report.splits["test"].num_unlabeled == 1


def test_csv_malformed_row_names_line_and_id(tmp_path):
    data = tmp_path / "csvbad"
    write_image(data / "x.png")
    path = data / "data.csv"
    path.write_text('id,image,text,label\nr1,x.png,"ok",a\nr2,x.png,too,many,fields,b\nr3,x.png,fine,b\n')

    with pytest.raises(BadRowError) as info:
        load_image_text_files(path, cache_dir=tmp_path / "cache")
    assert (info.value.file, info.value.line, info.value.id) == (str(path), 3, "r2")
    assert "malformed CSV row" in str(info.value)

    dataset, report = load_image_text_files(path, cache_dir=tmp_path / "cache", on_bad_rows="skip", return_report=True)
    assert dataset["train"]["id"] == ["r1", "r3"]
    assert report.skipped_ids == ["r2"]


def test_label_outside_user_class_set(sentiment_jsonl, tmp_path):
    with pytest.raises(BadRowError) as info:
        load_image_text_files(
            sentiment_jsonl,
            image_column="photo",
            text_column="caption",
            label_column="sentiment",
            class_names=["negative", "positive"],
            cache_dir=tmp_path / "cache",
        )
    assert (info.value.line, info.value.id) == (3, "2")  # third line; no `id` column in the file: row number 2
    assert "'neutral' is not in the class set" in str(info.value)


def test_misnamed_column_is_a_configuration_error(sentiment_jsonl, tmp_path):
    with pytest.raises(ValueError, match="no column 'image'"):
        load_image_text_files(sentiment_jsonl, text_column="caption", cache_dir=tmp_path / "cache")


def test_from_dataset_with_pil_images_and_string_labels(tmp_path):
    images = [Image.new("RGB", (8, 6), (255, 0, 0)), Image.new("L", (5, 5), 77), Image.new("RGBA", (4, 4))]
    source = datasets.Dataset.from_dict(
        {"picture": images, "caption": ["a", "", None], "mood": ["happy", "sad", "happy"], "extra": [1, 2, 3]}
    )

    dataset, report = from_dataset(
        source, image_column="picture", text_column="caption", label_column="mood", return_report=True
    )

    train = dataset["train"]
    assert train.column_names == ["id", "image", "text", "label"]
    assert train.features["label"].names == ["happy", "sad"]
    assert train["id"] == ["0", "1", "2"]
    assert train["label"] == [0, 1, 0]
    assert train["text"] == ["a", "", ""]
    assert [train[i]["image"].mode for i in range(3)] == ["RGB"] * 3
    assert train[1]["image"].getpixel((0, 0)) == (77, 77, 77)
    assert train[2]["image"].getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    assert report.splits["train"].num_empty_text == 2


def test_from_dataset_dict_with_classlabel_paths_and_bad_rows(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MMFUSION_CACHE", str(tmp_path / "mmfusion_cache"))
    write_image(tmp_path / "imgs" / "a.png", color=(1, 2, 3))
    features = datasets.Features(
        {"id": datasets.Value("string"), "image": datasets.Value("string"), "text": datasets.Value("string"),
         "label": datasets.ClassLabel(names=["neg", "pos"])}
    )  # fmt: skip
    source = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"id": ["a", "b"], "image": ["imgs/a.png", "imgs/missing.png"], "text": ["x", "y"], "label": [1, 0]},
                features=features,
            ),
            "test": datasets.Dataset.from_dict(
                {"id": ["c"], "image": ["imgs/a.png"], "text": ["z"], "label": [-1]}, features=features
            ),
        }
    )

    with pytest.raises(BadRowError) as info:
        from_dataset(source, base_dir=tmp_path)
    assert (info.value.row, info.value.id) == (1, "b") and "image file not found" in str(info.value)

    with caplog.at_level(logging.WARNING, logger="mmfusion.data"):
        dataset, report = from_dataset(
            source, base_dir=tmp_path, class_names=["pos", "neg"], on_bad_rows="skip", return_report=True
        )
    assert dataset["train"]["id"] == ["a"]
    assert dataset["train"]["label"] == [0]  # remapped by name to the user's order
    assert dataset["test"]["label"] == [-1]
    assert dataset["train"][0]["image"].getpixel((0, 0)) == (1, 2, 3)
    assert report.skipped_ids == ["b"]
    assert report.path.startswith(str(tmp_path / "mmfusion_cache"))
    assert json.loads(open(report.path).read())["splits"]["train"]["skipped"][0]["id"] == "b"
    assert any(report.path in record.getMessage() for record in caplog.records)


def test_from_dataset_fingerprint_follows_image_files(tmp_path):
    write_image(tmp_path / "a.png", color=(1, 1, 1))
    source = datasets.Dataset.from_dict({"image": ["a.png"], "text": ["t"], "label": [0]})
    first = from_dataset(source, base_dir=tmp_path)["train"]
    again = from_dataset(source, base_dir=tmp_path)["train"]
    write_image(tmp_path / "a.png", size=(17, 12), color=(2, 2, 2))
    changed = from_dataset(source, base_dir=tmp_path)["train"]

    assert first._fingerprint == again._fingerprint
    assert changed._fingerprint != first._fingerprint


def test_detect_kind(tmp_path, sentiment_jsonl):
    (tmp_path / "hm" / "img").mkdir(parents=True)
    (tmp_path / "hm" / "train.jsonl").write_text("")
    assert detect_kind("demo") == "demo"
    assert detect_kind(tmp_path / "hm") == "hateful_memes"
    assert detect_kind(str(sentiment_jsonl)) == "files"
    assert detect_kind({"train": sentiment_jsonl}) == "files"
    assert detect_kind(datasets.Dataset.from_dict({"a": [1]})) == "dataset"
    with pytest.raises(ValueError, match="in none of the layouts mmfusion recognises: Hateful Memes"):
        detect_kind(tmp_path)
    with pytest.raises(FileNotFoundError):
        detect_kind(tmp_path / "nothing")


def test_each_split_file_is_parsed_once_per_build(sentiment_jsonl, tmp_path, monkeypatch):
    """Class names, the cache signature and the rows all come from one parse of each split file."""
    import builtins

    opened = []
    real_open = builtins.open

    def counting_open(path, *args, **kwargs):
        if str(path) == str(sentiment_jsonl):
            opened.append(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    options = dict(id_column="post_id", image_column="photo", text_column="caption", label_column="sentiment")
    dataset = load_image_text_files(sentiment_jsonl, cache_dir=tmp_path / "cache", **options)
    assert len(dataset["train"]) == 5 and len(opened) == 1  # a fresh build
    load_image_text_files(sentiment_jsonl, cache_dir=tmp_path / "cache", **options)
    assert len(opened) == 2  # a load from the cache reads it once, for the signature of the referenced images
