"""A small synthetic "memes" dataset where only the combination of image and text decides the label.

It is generated on the machine (no download, nothing stored in git), deterministically from a seed, as a
Hateful-Memes-layout folder (`img/*.png`, `train.jsonl`, `dev.jsonl`, `test.jsonl`) that is then loaded with the
`HatefulMemes` builder, so the zero-argument training run and the tests exercise the real loading pipeline.

**The rule.** Every example has two coarse cues:

- *image cue* - the colour family of the picture: a 64x64 RGB image whose background is a saturated **warm**
  colour (hue from red through orange to yellow, about -20..50 degrees) or **cold** colour (cyan to blue, about
  170..250 degrees), with a grey square, disc or triangle of random size and position on top (a distractor: grey
  adds nothing to the colour cue). The cue can be read back as the sign of the mean of `R - B` over the image.
- *text cue* - the caption is 3-6 filler words from a small vocabulary (`FILLER_WORDS`) plus exactly one keyword,
  either **warm** (`WARM_WORDS`: sun, fire, summer, ...) or **cold** (`COLD_WORDS`: snow, ice, winter, ...).

The label is `hateful` (1) when the caption contradicts the picture (warm word on a cold picture, or cold word on a
warm picture) and `not_hateful` (0) when they agree: `label = int(image_is_warm != text_is_warm)`, an XOR.

As in the "benign confounders" of the Hateful Memes paper, captions come in pairs: each caption is used twice, once
with a warm and once with a cold picture, so the same caption is hateful in one example and benign in the other.
The four (image cue, text cue) combinations are exactly balanced in every split, so **text alone and image alone
carry no information about the label** (chance level), while the two together decide it without noise.
`demo_rule(image, text)` recomputes the label from the raw image and caption.

**A spatial image cue** (`image_cue="patch"`, for checking that an explanation points at the cue; the default,
`"colour"`, is the one above and its files are unchanged): the warm or cold colour is a square patch of 14-20 px at
a random position on a neutral grey background (128, with grey pixel noise), and two distractor shapes (square, disc or
triangle, 12-20 px) in green or magenta lie anywhere, drawn before the patch (so the patch is never covered). Every
pixel outside the patch has `R == B` exactly (grey, green `(low, high, low)`, magenta `(high, low, high)`), so the
patch is the only region where the colour cue lives; `demo_cue_box(image)` reads its box back from the pixels and
`demo_cues` / `demo_rule` work unchanged (the sign of the mean of `R - B` is the patch's). Same caption vocabulary,
pairing, label rule and split sizes as the default (other draws); its own folder (`default_demo_root(seed, "patch")`).

Splits: `train` (2000), `validation` (400, written as `dev.jsonl`), `test` (400); class names `not_hateful`,
`hateful`; ids are 5-digit strings with leading zeros (`"00042"`), as in the real data.
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
import tempfile

import datasets
import numpy as np
from PIL import Image, ImageDraw

from ..processing_mmfusion import to_rgb
from .errors import mmfusion_cache_dir
from .hateful_memes import HATEFUL_MEMES_CLASS_NAMES, load_hateful_memes
from .options import LoaderArguments

DEMO_VERSION = "1"
DEMO_CLASS_NAMES = list(HATEFUL_MEMES_CLASS_NAMES)
DEMO_IMAGE_SIZE = 64
DEMO_SPLIT_SIZES = {"train": 2000, "validation": 400, "test": 400}
# Demo split -> Hateful Memes split file stem (phase-1 names).
_SPLIT_FILES = {"train": "train", "validation": "dev", "test": "test"}
WARM_WORDS = ("sun", "fire", "summer", "desert", "lava", "flame")
COLD_WORDS = ("snow", "ice", "winter", "glacier", "frost", "blizzard")
FILLER_WORDS = (
    "look", "at", "this", "my", "friend", "today", "again", "so", "very", "what",
    "a", "day", "the", "people", "here", "when", "you", "see", "it", "we",
)  # fmt: skip
_WARM_HUES = (-20.0, 50.0)
_COLD_HUES = (170.0, 250.0)
_MARKER_FILE = "mmfusion_demo.json"
DEMO_IMAGE_CUES = ("colour", "patch")
_PATCH_SIZES = (14, 21)  # the cue patch's side, px (upper bound exclusive)
_DISTRACTOR_SIZES = (12, 21)
_NUM_DISTRACTORS = 2


def _check_image_cue(image_cue: str) -> None:
    if image_cue not in DEMO_IMAGE_CUES:
        raise ValueError(f"image_cue must be one of {DEMO_IMAGE_CUES}, got {image_cue!r}")


def default_demo_root(seed: int = 0, image_cue: str = "colour") -> str:
    """`~/.cache/mmfusion/demo-<seed>-v<version>` (or under `$MMFUSION_CACHE`); `...-patch` for the spatial cue."""
    _check_image_cue(image_cue)
    suffix = "" if image_cue == "colour" else f"-{image_cue}"
    return os.path.join(mmfusion_cache_dir(), f"demo-{seed}-v{DEMO_VERSION}{suffix}")


def demo_cues(image: Image.Image, text: str) -> tuple[bool, bool]:
    """The two cues of a demo example: `(image_is_warm, text_is_warm)`, read from the raw image and caption."""
    pixels = np.asarray(to_rgb(image), dtype=np.float64)
    image_is_warm = bool((pixels[..., 0] - pixels[..., 2]).mean() > 0)
    words = set(text.split())
    warm, cold = bool(words & set(WARM_WORDS)), bool(words & set(COLD_WORDS))
    if warm == cold:
        raise ValueError(f"not a demo caption (needs exactly one warm or cold keyword): {text!r}")
    return image_is_warm, warm


def demo_rule(image: Image.Image, text: str) -> int:
    """The documented label rule: 1 (`hateful`) when the caption's keyword contradicts the picture's colour family."""
    image_is_warm, text_is_warm = demo_cues(image, text)
    return int(image_is_warm != text_is_warm)


def demo_cue_box(image: Image.Image) -> tuple[int, int, int, int]:
    """The box `(left, top, right, bottom)` (pixels, right/bottom exclusive) of a patch-cue demo image's coloured
    patch (`image_cue="patch"`), read from the pixels: the only ones with `R != B`. Raises `ValueError` for an image
    without such pixels (e.g. a default demo image, where the colour fills the background)."""
    pixels = np.asarray(to_rgb(image), dtype=np.int16)
    rows, columns = np.nonzero(pixels[..., 0] != pixels[..., 2])
    if not len(rows):
        raise ValueError("not a patch-cue demo image: no pixel has R != B (no warm or cold patch)")
    box = (int(columns.min()), int(rows.min()), int(columns.max()) + 1, int(rows.max()) + 1)
    width, height = box[2] - box[0], box[3] - box[1]
    if not (_PATCH_SIZES[0] <= width < _PATCH_SIZES[1] and width == height):
        raise ValueError(f"not a patch-cue demo image: the pixels with R != B span {width}x{height} px, not a patch")
    return box


def _cue_colour(rng: np.random.Generator, warm: bool) -> tuple[int, int, int]:
    low, high = _WARM_HUES if warm else _COLD_HUES
    hue = (rng.uniform(low, high) % 360.0) / 360.0
    saturation, value = rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0)
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, saturation, value))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: int, x: int, y: int, size: int, fill) -> None:
    box = (x, y, x + size, y + size)
    if shape == 0:
        draw.rectangle(box, fill=fill)
    elif shape == 1:
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon([(x, y + size), (x + size, y + size), (x + size // 2, y)], fill=fill)


def _draw_patch_image(rng: np.random.Generator, warm: bool) -> Image.Image:
    """The spatial cue (`image_cue="patch"`, see the module docstring): every pixel but the patch's has R == B."""
    # One grey level for every picture: a level that varied was a nuisance cue the tests' CNN read at the image's
    # (zero-padded) borders, where Grad-CAM then pointed instead of at the patch.
    noise = rng.normal(0.0, 12.0, size=(DEMO_IMAGE_SIZE, DEMO_IMAGE_SIZE))
    grey = np.clip(np.rint(128 + noise), 0, 255).astype(np.uint8)
    image = Image.fromarray(np.repeat(grey[..., None], 3, axis=2), mode="RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(_NUM_DISTRACTORS):
        size = int(rng.integers(*_DISTRACTOR_SIZES))
        x, y = (int(v) for v in rng.integers(0, DEMO_IMAGE_SIZE - size, size=2))
        low, high = int(rng.integers(0, 80)), int(rng.integers(150, 256))
        fill = (low, high, low) if rng.integers(0, 2) else (high, low, high)  # green or magenta: R == B
        _draw_shape(draw, int(rng.integers(0, 3)), x, y, size, fill)
    size = int(rng.integers(*_PATCH_SIZES))
    x, y = (int(v) for v in rng.integers(0, DEMO_IMAGE_SIZE - size + 1, size=2))
    draw.rectangle((x, y, x + size - 1, y + size - 1), fill=_cue_colour(rng, warm))
    return image


def _draw_image(rng: np.random.Generator, warm: bool) -> Image.Image:
    low, high = _WARM_HUES if warm else _COLD_HUES
    hue = (rng.uniform(low, high) % 360.0) / 360.0
    saturation, value = rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0)
    background = tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, saturation, value))
    image = Image.new("RGB", (DEMO_IMAGE_SIZE, DEMO_IMAGE_SIZE), background)
    draw = ImageDraw.Draw(image)
    grey = int(rng.integers(0, 256))
    size = int(rng.integers(18, 35))
    x, y = (int(v) for v in rng.integers(0, DEMO_IMAGE_SIZE - size, size=2))
    shape = int(rng.integers(0, 3))
    box = (x, y, x + size, y + size)
    if shape == 0:
        draw.rectangle(box, fill=(grey, grey, grey))
    elif shape == 1:
        draw.ellipse(box, fill=(grey, grey, grey))
    else:
        draw.polygon([(x, y + size), (x + size, y + size), (x + size // 2, y)], fill=(grey, grey, grey))
    return image


def _caption(rng: np.random.Generator, warm: bool) -> str:
    words = [FILLER_WORDS[i] for i in rng.integers(0, len(FILLER_WORDS), size=int(rng.integers(3, 7)))]
    keywords = WARM_WORDS if warm else COLD_WORDS
    words.insert(int(rng.integers(0, len(words) + 1)), keywords[int(rng.integers(0, len(keywords)))])
    return " ".join(words)


def _generate_split(
    rng: np.random.Generator, size: int, image_cue: str = "colour"
) -> list[tuple[Image.Image, str, int]]:
    """`size // 2` caption pairs; each caption once with a warm and once with a cold picture, then shuffled."""
    draw_image = _draw_patch_image if image_cue == "patch" else _draw_image
    examples = []
    for pair in range(size // 2):
        text_is_warm = pair % 2 == 0  # exactly balanced text cue (and, through the pairs, image cue)
        caption = _caption(rng, text_is_warm)
        for image_is_warm in (True, False):
            examples.append((draw_image(rng, image_is_warm), caption, int(image_is_warm != text_is_warm)))
    order = rng.permutation(len(examples))
    return [examples[i] for i in order]


def make_demo_folder(
    root: str | os.PathLike | None = None,
    seed: int = 0,
    *,
    num_train: int = DEMO_SPLIT_SIZES["train"],
    num_validation: int = DEMO_SPLIT_SIZES["validation"],
    num_test: int = DEMO_SPLIT_SIZES["test"],
    image_cue: str = "colour",
) -> str:
    """Write the demo dataset as a Hateful-Memes-layout folder (see the module docstring) and return its path.

    The folder is written to a temporary sibling and renamed into place, so an interrupted run never leaves a
    half-written folder behind. An existing complete folder with the same parameters is reused as is.

    Args:
        root (`str` or `os.PathLike`, *optional*):
            Target folder. Default: `default_demo_root(seed)`.
        seed (`int`, defaults to 0):
            Same seed (and sizes) -> byte-identical files.
        num_train, num_validation, num_test (`int`):
            Split sizes; even numbers (examples come in caption pairs).
        image_cue (`str`, defaults to `"colour"`):
            `"colour"`: the picture's background colour; `"patch"`: a coloured patch at a random position (the
            spatial cue, see the module docstring; default folder `default_demo_root(seed, "patch")`).
    """
    _check_image_cue(image_cue)
    sizes = {"train": num_train, "validation": num_validation, "test": num_test}
    for split, size in sizes.items():
        if size <= 0 or size % 2:
            raise ValueError(f"demo split sizes must be positive and even (caption pairs), got {split}={size}")
    root = os.path.abspath(os.fspath(root) if root is not None else default_demo_root(seed, image_cue))
    marker = {"version": DEMO_VERSION, "seed": seed, "sizes": sizes, "image_size": DEMO_IMAGE_SIZE}
    if image_cue != "colour":  # the default's marker (and every file) stays byte-identical
        marker["image_cue"] = image_cue
    marker_path = os.path.join(root, _MARKER_FILE)
    if os.path.isfile(marker_path):
        with open(marker_path, encoding="utf-8") as f:
            existing = json.load(f)
        if existing == marker:
            return root
        raise FileExistsError(f"{root} holds a different demo dataset ({existing}); choose another `root`.")
    if os.path.exists(root) and (not os.path.isdir(root) or os.listdir(root)):
        raise FileExistsError(f"{root} exists and is not a demo folder; choose another `root`.")

    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp_root = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.tmp-", dir=parent)
    os.chmod(tmp_root, 0o755)  # mkdtemp makes it private; the finished folder should be readable like any other
    try:
        os.makedirs(os.path.join(tmp_root, "img"))
        next_id = 0
        for split_index, (split, size) in enumerate(sizes.items()):
            # One generator per split: changing a split's size leaves the other splits' content unchanged.
            rng = np.random.default_rng([seed, split_index])
            lines = []
            for image, caption, label in _generate_split(rng, size, image_cue):
                example_id = f"{next_id:05d}"
                next_id += 1
                image.save(os.path.join(tmp_root, "img", f"{example_id}.png"), format="PNG")
                lines.append(
                    json.dumps({"id": example_id, "img": f"img/{example_id}.png", "label": label, "text": caption})
                )
            with open(os.path.join(tmp_root, f"{_SPLIT_FILES[split]}.jsonl"), "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
        with open(os.path.join(tmp_root, _MARKER_FILE), "w", encoding="utf-8") as f:
            json.dump(marker, f, indent=2)
        if os.path.isdir(root):
            os.rmdir(root)  # empty folder made by the caller
        try:
            os.rename(tmp_root, root)
        except OSError:
            if not os.path.isfile(marker_path):  # lost a race with another process writing the same folder: fine
                raise
    finally:
        if os.path.exists(tmp_root):
            shutil.rmtree(tmp_root, ignore_errors=True)
    return root


def load_demo_dataset(
    seed: int = LoaderArguments.demo_seed,
    root: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = LoaderArguments.cache_dir,
    num_train: int = DEMO_SPLIT_SIZES["train"],
    num_validation: int = DEMO_SPLIT_SIZES["validation"],
    num_test: int = DEMO_SPLIT_SIZES["test"],
    on_bad_rows: str = LoaderArguments.on_bad_rows,
    max_image_pixels: int = LoaderArguments.max_image_pixels,
    report_path: str | os.PathLike | None = None,
    return_report: bool = False,
    image_cue: str = "colour",
):
    """Generate (once) and load the demo dataset: a `DatasetDict` with `train`, `validation` and `test` splits.

    Args:
        seed (`int`, defaults to 0):
            Generation seed; same seed -> identical dataset.
        root (`str`, *optional*):
            Folder for the generated files. Default: `~/.cache/mmfusion/demo-<seed>-v<version>`.
        cache_dir (`str`, *optional*):
            `datasets` cache directory. Default: `<root>/datasets_cache`, so that everything demo-related lives in
            one folder.
        num_train, num_validation, num_test (`int`):
            Split sizes (even).
        image_cue (`str`, defaults to `"colour"`):
            `"patch"`: the spatial image cue (see the module docstring and `demo_cue_box`).
        on_bad_rows, max_image_pixels, report_path, return_report:
            See `load_image_text_dataset` (the generated data has no bad rows; the options are the same as for any
            source).
    """
    root = make_demo_folder(
        root, seed, num_train=num_train, num_validation=num_validation, num_test=num_test, image_cue=image_cue
    )
    if cache_dir is None:
        cache_dir = os.path.join(root, "datasets_cache")
    loaded, report = load_hateful_memes(
        root,
        cache_dir=cache_dir,
        on_bad_rows=on_bad_rows,
        max_image_pixels=max_image_pixels,
        report_path=report_path,
        return_report=True,
    )
    dataset_dict = datasets.DatasetDict({split: loaded[_SPLIT_FILES[split]] for split in _SPLIT_FILES})
    return (dataset_dict, report) if return_report else dataset_dict
