"""Images in any mode and format come out of `ds[split][i]["image"]` as RGB, with EXIF rotation applied."""

import json

import datasets
import numpy as np
import pytest
from PIL import Image, features

from mmfusion.data import load_image_text_files

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _two_halves(size=(40, 20)):
    """Left half red, right half blue: shows where a rotation puts things."""
    image = Image.new("RGB", size, RED)
    image.paste(BLUE, (size[0] // 2, 0, size[0], size[1]))
    return image


def _animated_gif(path):
    frames = [Image.new("RGB", (12, 10), RED), Image.new("RGB", (12, 10), BLUE)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


def _exif_rotated_jpeg(path):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: the viewer rotates the stored pixels 90 degrees clockwise
    _two_halves().save(path, format="JPEG", quality=95, exif=exif.tobytes())


def _rgba(path):
    image = Image.new("RGBA", (10, 10), (0, 0, 255, 255))
    image.paste((0, 0, 0, 0), (0, 0, 5, 10))  # left half fully transparent
    image.save(path)


def _palette(path):
    image = Image.new("RGB", (10, 10), (0, 128, 0)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    image.save(path)


def _sixteen_bit(path):
    Image.fromarray(np.full((8, 9), 30000, dtype=np.uint16)).save(path)  # PIL mode I;16


# name -> (file name, writer, expected size after decoding, checks on the decoded RGB pixels)
CASES = {
    "L": ("l.png", lambda p: Image.new("L", (7, 5), 90).save(p), (7, 5), {(0, 0): (90, 90, 90)}),
    "P": ("p.png", _palette, (10, 10), {(3, 3): (0, 128, 0)}),
    "RGBA": ("rgba.png", _rgba, (10, 10), {(1, 1): (255, 255, 255), (8, 1): (0, 0, 255)}),
    "CMYK": ("cmyk.jpg", lambda p: Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(p, quality=95), (8, 8), None),
    "I;16": ("i16.png", _sixteen_bit, (9, 8), {(0, 0): (117, 117, 117)}),  # 30000/257, not clipped to white
    "EXIF-rotated JPEG": ("rotated.jpg", _exif_rotated_jpeg, (20, 40), None),
    "WebP": ("pic.webp", lambda p: _two_halves().save(p, lossless=True), (40, 20), {(5, 5): RED, (35, 5): BLUE}),
    "animated GIF": ("anim.gif", _animated_gif, (12, 10), {(5, 5): RED}),
    "plain RGB PNG": ("rgb.png", lambda p: _two_halves().save(p), (40, 20), {(5, 5): RED, (35, 5): BLUE}),
}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    if not features.check("webp"):
        pytest.skip("Pillow built without WebP support")
    root = tmp_path_factory.mktemp("modes")
    rows = []
    for name, (file_name, write, _, _) in CASES.items():
        write(root / file_name)
        rows.append({"id": name, "image": file_name, "text": name, "label": 0})
    with open(root / "data.jsonl", "w") as f:
        f.write("\n".join(json.dumps(row) for row in rows) + "\n")
    dataset, report = load_image_text_files(
        root / "data.jsonl", cache_dir=root / "cache", class_names=["a"], return_report=True
    )
    return dataset["train"], report


@pytest.mark.parametrize("name", list(CASES))
def test_every_mode_and_format_decodes_to_rgb(loaded, name):
    train, _ = loaded
    image = train[train["id"].index(name)]["image"]
    _, _, expected_size, expected_pixels = CASES[name]
    assert image.mode == "RGB"
    assert image.size == expected_size
    for xy, color in (expected_pixels or {}).items():
        assert image.getpixel(xy) == pytest.approx(color, abs=3), (name, xy)


def test_cmyk_colour_survives(loaded):
    train, _ = loaded
    red, green, blue = train[train["id"].index("CMYK")]["image"].getpixel((4, 4))
    assert red > 200 and green < 60 and blue < 60


def test_exif_rotation_applied_once(loaded):
    train, _ = loaded
    image = train[train["id"].index("EXIF-rotated JPEG")]["image"]
    # Rotating 90 degrees clockwise puts the stored left (red) half on top, the right (blue) half at the bottom.
    top, bottom = image.getpixel((10, 5)), image.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_plain_rgb_files_are_stored_by_path_others_as_png(loaded):
    train, report = loaded
    raw = train.cast_column("image", datasets.Image(decode=False))
    stored = {row["id"]: row["image"] for row in raw}
    assert stored["plain RGB PNG"]["bytes"] is None and stored["plain RGB PNG"]["path"].endswith("rgb.png")
    assert stored["WebP"]["bytes"] is None  # lossless RGB WebP: decoded as is by datasets
    for name in ("L", "P", "RGBA", "CMYK", "I;16", "EXIF-rotated JPEG", "animated GIF"):
        assert stored[name]["path"] is None and stored[name]["bytes"].startswith(b"\x89PNG"), name
    assert report.splits["train"].num_images_converted == 7


def test_source_files_really_are_in_those_modes(loaded, tmp_path):
    expected = {"L": "L", "P": "P", "RGBA": "RGBA", "CMYK": "CMYK", "I;16": "I;16", "animated GIF": "P"}
    for name, mode in expected.items():
        file_name, write, _, _ = CASES[name]
        write(tmp_path / file_name)
        with Image.open(tmp_path / file_name) as image:
            assert image.mode == mode, name
    with Image.open(tmp_path / "anim.gif") as image:
        assert image.n_frames == 2
