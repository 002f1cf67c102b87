"""Looking at data: `save_grid`, `describe` and the `mmfusion-data` CLI."""

import json
import os

import datasets
import pytest
from PIL import Image

from mmfusion.data import describe, grid_pixel_size, save_grid
from mmfusion.data.cli import main


@pytest.fixture
def memes(tmp_path):
    root = tmp_path / "memes"
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(6):
        Image.new("RGB", (32, 24), (40 * i, 100, 200)).save(root / "img" / f"{i:05d}.png")
        rows.append({"id": f"{i:05d}", "img": f"img/{i:05d}.png", "label": int(i < 2), "text": f"caption number {i}"})
    (root / "train.jsonl").write_text("\n".join(json.dumps(row) for row in rows[:5]) + "\n")
    (root / "test_unseen.jsonl").write_text(json.dumps({k: v for k, v in rows[5].items() if k != "label"}) + "\n")
    return root


def test_save_grid_pixel_size(tmp_path):
    images = [Image.new("RGB", (20, 20), (i * 40, 0, 0)) for i in range(6)]
    dataset = datasets.Dataset.from_dict(
        {"id": [str(i) for i in range(6)], "image": images, "text": ["a long caption " * 5, "", "c", "d", "e", "f"],
         "label": [0, 1, 0, 1, -1, 0]},
        features=datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(),
                                    "text": datasets.Value("string"),
                                    "label": datasets.ClassLabel(names=["not_hateful", "hateful"])}),
    )  # fmt: skip

    path = save_grid(dataset, tmp_path / "out" / "grid.png", num_examples=6, columns=4, cell_size=(2.0, 2.5), dpi=50)

    with Image.open(path) as grid:
        # 4 columns x 2 rows of 2.0 x 2.5 inch cells at 50 dpi
        assert grid.size == (4 * 2.0 * 50, 2 * 2.5 * 50) == grid_pixel_size(6, 4, (2.0, 2.5), 50)
        assert grid.format == "PNG"
        assert len(set(grid.convert("RGB").getdata())) > 10  # something was drawn


def test_describe_counts_splits_and_labels(memes, tmp_path, capsys):
    from mmfusion.data import load_hateful_memes

    stats = describe(load_hateful_memes(memes, cache_dir=tmp_path / "cache"))

    assert stats == {
        "train": {"num_rows": 5, "labels": {"not_hateful": 3, "hateful": 2}, "unlabeled": 0},
        "test_unseen": {"num_rows": 1, "labels": {"not_hateful": 0, "hateful": 0}, "unlabeled": 1},
    }
    printed = capsys.readouterr().out
    assert "train: 5 rows" in printed and "hateful 2 (40.0%)" in printed and "unlabeled 1" in printed


def test_cli_stats_and_grid(memes, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    assert main(["stats", str(memes), "--cache-dir", cache]) == 0
    assert "train: 5 rows" in capsys.readouterr().out

    out = tmp_path / "grid.png"
    assert (
        main(["grid", str(memes), "--split", "train", "--out", str(out), "--cache-dir", cache, "--columns", "2"]) == 0
    )
    with Image.open(out) as grid:
        assert grid.size == grid_pixel_size(5, 2)

    assert main(["grid", str(memes), "--split", "nope", "--out", str(out), "--cache-dir", cache]) == 1
    assert "no split 'nope'" in capsys.readouterr().err


def test_cli_reports_bad_rows(tmp_path, capsys):
    data = tmp_path / "data.csv"
    data.write_text("image,text,label\nmissing.png,hello,pos\n")
    assert main(["stats", str(data), "--cache-dir", str(tmp_path / "cache")]) == 1
    err = capsys.readouterr().err
    assert "line 2" in err and "image file not found" in err and os.fspath(data) in err
