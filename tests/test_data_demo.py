"""The demo dataset: deterministic, and only the combination of image and text decides the label."""

import hashlib
import json
import os
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from mmfusion.data import DEMO_CLASS_NAMES, demo_cues, demo_rule, load_demo_dataset, load_image_text_dataset
from mmfusion.data.demo import make_demo_folder

CHANCE_CEILING = 0.60


def folder_digest(root):
    """Hash of every data file of a demo folder (names and bytes)."""
    digest = hashlib.sha256()
    for directory, _, files in sorted(os.walk(root)):
        if "datasets_cache" in directory:
            continue
        for name in sorted(files):
            path = os.path.join(directory, name)
            digest.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "seed0"
    return load_demo_dataset(seed=0, root=root), root


@pytest.fixture(scope="module")
def arrays(demo):
    """Per split: image features, captions, labels and the two cues, decoded once."""
    dataset, _ = demo
    out = {}
    for split in ("train", "test"):
        images, texts, labels, cues = [], [], [], []
        for example in dataset[split]:
            image = example["image"]
            pixels = np.asarray(image.resize((8, 8)), dtype=np.float32).reshape(-1) / 255.0
            histogram = np.concatenate(
                [np.histogram(np.asarray(image)[..., c], bins=8, range=(0, 256))[0] for c in range(3)]
            ) / (64 * 64)
            images.append(np.concatenate([pixels, histogram]))
            texts.append(example["text"])
            labels.append(example["label"])
            cues.append(demo_cues(image, example["text"]))
        out[split] = {
            "image": np.stack(images),
            "text": texts,
            "label": np.array(labels),
            "image_cue": np.array([c[0] for c in cues], dtype=float),
            "text_cue": np.array([c[1] for c in cues], dtype=float),
        }
    return out


def test_layout_sizes_and_classes(demo):
    dataset, root = demo
    assert {split: len(ds) for split, ds in dataset.items()} == {"train": 2000, "validation": 400, "test": 400}
    assert dataset["train"].features["label"].names == DEMO_CLASS_NAMES == ["not_hateful", "hateful"]
    example = dataset["validation"][0]
    assert example["image"].mode == "RGB" and example["image"].size == (64, 64)
    assert dataset["train"][0]["id"] == "00000" and dataset["test"][-1]["id"] == "02799"  # leading zeros
    assert sorted(os.listdir(root)) == sorted(
        ["img", "train.jsonl", "dev.jsonl", "test.jsonl", "mmfusion_demo.json", "datasets_cache"]
    )
    assert len(os.listdir(root / "img")) == 2800
    for split in dataset:
        assert sorted(set(dataset[split]["label"])) == [0, 1]
        assert sum(dataset[split]["label"]) == len(dataset[split]) // 2  # balanced


def test_same_seed_gives_identical_dataset(demo, tmp_path):
    dataset, root = demo
    again = load_demo_dataset(seed=0, root=tmp_path / "again")
    assert folder_digest(tmp_path / "again") == folder_digest(root)
    for split in dataset:
        for column in ("id", "text", "label"):
            assert again[split][column] == dataset[split][column]
    for i in range(0, 400, 37):
        assert np.array_equal(np.asarray(again["test"][i]["image"]), np.asarray(dataset["test"][i]["image"]))

    make_demo_folder(tmp_path / "seed1", seed=1, num_train=20, num_validation=4, num_test=4)
    make_demo_folder(tmp_path / "seed0-small", seed=0, num_train=20, num_validation=4, num_test=4)
    assert folder_digest(tmp_path / "seed1") != folder_digest(tmp_path / "seed0-small")


def test_existing_folder_is_reused(demo):
    dataset, root = demo
    before = os.stat(root / "train.jsonl").st_mtime_ns
    again = load_image_text_dataset("demo", seed=0, root=root)
    assert os.stat(root / "train.jsonl").st_mtime_ns == before
    assert again["train"]._fingerprint == dataset["train"]._fingerprint  # served from the datasets cache


def test_documented_rule_reproduces_every_label(demo):
    dataset, _ = demo
    for split in dataset:
        for example in dataset[split]:
            assert demo_rule(example["image"], example["text"]) == example["label"], (split, example["id"])


def test_each_caption_appears_with_both_labels(demo):
    dataset, _ = demo
    labels_by_caption = defaultdict(list)
    for text, label in zip(dataset["train"]["text"], dataset["train"]["label"]):
        labels_by_caption[text].append(label)
    assert all(sorted(labels) in ([0, 1], [0, 0, 1, 1]) for labels in labels_by_caption.values())


def _accuracy(train_x, train_y, test_x, test_y):
    model = LogisticRegression(max_iter=2000).fit(train_x, train_y)
    return model.score(test_x, test_y)


def test_text_alone_is_at_chance(arrays):
    vectorizer = CountVectorizer(token_pattern=r"\S+")
    train_x = vectorizer.fit_transform(arrays["train"]["text"])
    test_x = vectorizer.transform(arrays["test"]["text"])
    # The features do see the text cue...
    assert _accuracy(train_x, arrays["train"]["text_cue"], test_x, arrays["test"]["text_cue"]) > 0.95
    # ...but it says nothing about the label.
    assert _accuracy(train_x, arrays["train"]["label"], test_x, arrays["test"]["label"]) <= CHANCE_CEILING


def test_image_alone_is_at_chance(arrays):
    train_x, test_x = arrays["train"]["image"], arrays["test"]["image"]
    assert _accuracy(train_x, arrays["train"]["image_cue"], test_x, arrays["test"]["image_cue"]) > 0.95
    assert _accuracy(train_x, arrays["train"]["label"], test_x, arrays["test"]["label"]) <= CHANCE_CEILING


def test_only_the_combination_decides(arrays):
    def features(split, interaction):
        image_cue, text_cue = arrays[split]["image_cue"], arrays[split]["text_cue"]
        columns = [image_cue, text_cue] + ([image_cue * text_cue] if interaction else [])
        return np.stack(columns, axis=1)

    train_y, test_y = arrays["train"]["label"], arrays["test"]["label"]
    # Both cues side by side, without their interaction (late fusion of linear models): still chance.
    assert _accuracy(features("train", False), train_y, features("test", False), test_y) <= CHANCE_CEILING
    # With the interaction the label is a deterministic function of the two cues.
    assert _accuracy(features("train", True), train_y, features("test", True), test_y) == 1.0


# --- the spatial image cue (image_cue="patch") -------------------------------------------------------------------


@pytest.fixture(scope="module")
def patch_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("patch-demo") / "seed0"
    dataset = load_demo_dataset(seed=0, root=root, num_train=200, num_validation=40, num_test=40, image_cue="patch")
    return dataset, root


def test_patch_cue_is_a_square_region_and_decides_with_the_caption(patch_demo):
    from mmfusion.data import demo_cue_box

    dataset, root = patch_demo
    with open(root / "mmfusion_demo.json", encoding="utf-8") as f:
        assert json.load(f)["image_cue"] == "patch"
    assert sum(dataset["train"]["label"]) == 100  # balanced, as the default
    areas = []
    for split in dataset:
        for example in dataset[split]:
            image, text = example["image"], example["text"]
            assert demo_rule(image, text) == example["label"], (split, example["id"])
            left, top, right, bottom = demo_cue_box(image)
            assert 14 <= right - left == bottom - top <= 20, (split, example["id"])
            pixels = np.asarray(image, dtype=np.int16)
            inside = np.zeros(pixels.shape[:2], dtype=bool)
            inside[top:bottom, left:right] = True
            # the colour cue lives in the box only: every pixel of it is warm or cold, every other one has R == B
            difference = pixels[..., 0] - pixels[..., 2]
            assert (difference[~inside] == 0).all() and (np.abs(difference[inside]) > 30).all()
            assert (np.sign(difference[inside]) == (1 if demo_cues(image, text)[0] else -1)).all()
            areas.append((right - left) * (bottom - top) / 64**2)
    assert 0.04 < np.mean(areas) < 0.1
    # the box moves around: no fixed position a model could learn instead of looking for the colour
    boxes = [demo_cue_box(image)[:2] for image in dataset["train"]["image"][:50]]
    assert len(set(boxes)) > 40


def test_patch_cue_folder_is_deterministic_and_separate(patch_demo, tmp_path):
    from mmfusion.data import default_demo_root

    _, root = patch_demo
    make_demo_folder(tmp_path / "again", num_train=200, num_validation=40, num_test=40, image_cue="patch")
    assert folder_digest(tmp_path / "again") == folder_digest(root)
    assert default_demo_root(0, "patch") == default_demo_root(0) + "-patch"
    with pytest.raises(FileExistsError, match="different demo dataset"):  # the default demo's folder is not reused
        make_demo_folder(root, num_train=200, num_validation=40, num_test=40)
    with pytest.raises(ValueError, match="image_cue must be one of"):
        make_demo_folder(tmp_path / "bad", image_cue="corner")


def test_cue_box_refuses_an_image_without_a_patch(demo):
    from mmfusion.data import demo_cue_box

    dataset, _ = demo
    with pytest.raises(ValueError, match="not a patch-cue demo image"):
        demo_cue_box(dataset["test"][0]["image"])  # the default demo: the colour fills the background
    with pytest.raises(ValueError, match="no pixel has R != B"):
        demo_cue_box(Image.new("RGB", (64, 64), (90, 200, 90)))
