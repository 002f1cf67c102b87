"""Explanations shown and checked: PNG figures (meme, heat map, coloured caption), and the demo's sanity figures.

The explanations themselves are computed by `mmfusion.explanations` (remote code, shared with the pipeline):
`MMFusionPredictor.explain`, `mmfusion-predict --explain DIR`, the app and the report's error panel draw them here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..explanations import Explanation

# ------------------------------------------------------------------------------------------------ drawing


def _caption_colours(attributions: Sequence[float]):
    """RGBA per word: red pushes towards the explained class, blue against, alpha by magnitude (max = opaque)."""
    values = np.asarray(attributions, dtype=np.float64)
    scale = np.abs(values).max() if values.size and np.abs(values).max() > 0 else 1.0
    return [((0.85, 0.1, 0.1) if v >= 0 else (0.1, 0.3, 0.85)) + (0.15 + 0.7 * abs(v) / scale,) for v in values]


def draw_explanation(axes_image, axes_text, image, explanation: Explanation, title: str | None = None) -> None:
    """Draw one explanation on two matplotlib axes: the image with its heat map overlaid, the caption's words on
    backgrounds coloured by their attribution."""
    from ..processing_mmfusion import to_rgb

    axes_image.axis("off")
    if image is not None:
        picture = to_rgb(image)
        axes_image.imshow(picture)
        heat = explanation.heatmap_image(picture.width, picture.height)
        if heat is not None:  # transparent where the map is 0, so the meme stays visible
            import matplotlib

            overlay = matplotlib.colormaps["jet"](heat)
            overlay[..., 3] = 0.6 * heat
            axes_image.imshow(overlay)
    axes_image.set_title(title or f"{explanation.label} ({explanation.score:.2f})", fontsize=9)
    axes_text.axis("off")
    words = explanation.words or ["(no caption)"]
    colours = _caption_colours(explanation.word_attributions) if explanation.words else [(1, 1, 1, 0)]
    renderer = axes_text.figure.canvas.get_renderer()
    x, y = 0.0, 0.9
    for word, colour in zip(words, colours):
        text = axes_text.text(
            x, y, word, fontsize=9, va="top", ha="left", transform=axes_text.transAxes,
            bbox={"boxstyle": "round,pad=0.2", "facecolor": colour, "edgecolor": "none"},
        )  # fmt: skip
        width = text.get_window_extent(renderer).transformed(axes_text.transAxes.inverted()).width + 0.04
        if x + width > 1.0 and x > 0:  # wrap
            x, y = 0.0, y - 0.3
            text.set_position((x, y))
        x += width


def heatmap_overlay(image, explanation: Explanation, opacity: float = 0.6):
    """The image (RGB PIL) with the heat map blended over it in the jet colormap, transparent where the map is 0."""
    import matplotlib
    from PIL import Image

    from ..processing_mmfusion import to_rgb

    picture = to_rgb(image)
    heat = explanation.heatmap_image(picture.width, picture.height)
    if heat is None:
        return picture
    colours = matplotlib.colormaps["jet"](heat)[..., :3]
    alpha = (opacity * heat)[..., None]
    blended = (1 - alpha) * np.asarray(picture, dtype=np.float64) / 255.0 + alpha * colours
    return Image.fromarray(np.clip(np.rint(blended * 255), 0, 255).astype(np.uint8))


def highlighted_words(explanation: Explanation) -> list[tuple[str, float]]:
    """`(word, score)` pairs with scores in [-1, 1] (attribution / the largest magnitude), for `gr.HighlightedText`."""
    values = np.asarray(explanation.word_attributions, dtype=np.float64)
    scale = np.abs(values).max() if values.size and np.abs(values).max() > 0 else 1.0
    return [(word, float(value / scale)) for word, value in zip(explanation.words, values)]


def save_explanation_png(path: str | os.PathLike, image, explanation: Explanation, title: str | None = None) -> Path:
    """One PNG: the image with its heat map, and the coloured caption below it."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(3.2, 4.0), gridspec_kw={"height_ratios": [4, 1]})
    draw_explanation(top, bottom, image, explanation, title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def save_explanation_grid(
    path: str | os.PathLike, images: Sequence, explanations: Sequence[Explanation], titles: Sequence[str]
) -> Path:
    """A PNG grid, one column per example: meme with heat map, coloured caption (the report's error panel)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    count = max(len(explanations), 1)
    figure, axes = plt.subplots(
        2, count, figsize=(3.0 * count, 4.2), gridspec_kw={"height_ratios": [4, 1.3]}, squeeze=False
    )
    for column, (image, explanation, title) in enumerate(zip(images, explanations, titles)):
        draw_explanation(axes[0, column], axes[1, column], image, explanation, title)
    for column in range(len(explanations), count):
        axes[0, column].axis("off")
        axes[1, column].axis("off")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def explanation_filename(example_id: str, index: int) -> str:
    """A safe PNG name for an example: `<index>_<id>.png` (the id's unsafe characters replaced)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(example_id))[:80]
    return f"{index:05d}_{safe}.png" if safe else f"{index:05d}.png"


def write_explanations(predictor, images: Sequence, texts: Sequence, ids: Sequence[str], folder, *, steps=None):
    """Explain each pair's decision with `predictor` and write `folder/<index>_<id>.png` per pair (meme with heat
    map, coloured caption) and `folder/explanations.jsonl` (one `{"id", "png", **Explanation.to_dict()}` per pair).
    Returns the PNG paths."""
    import json

    from .images import load_image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with open(folder / "explanations.jsonl", "w", encoding="utf-8") as records:
        for start in range(0, len(texts), predictor.batch_size):
            chunk = slice(start, start + predictor.batch_size)
            loaded = [load_image(image) for image in images[chunk]]
            explanations = predictor.explain_batch(loaded, list(texts[chunk]), steps=steps)
            for offset, (image, explanation) in enumerate(zip(loaded, explanations)):
                index = start + offset
                example_id = str(ids[index])
                path = folder / explanation_filename(example_id, index)
                save_explanation_png(
                    path, image, explanation, f"{example_id}: {explanation.label} ({explanation.score:.2f})"
                )
                records.write(json.dumps({"id": example_id, "png": path.name, **explanation.to_dict()}) + "\n")
                paths.append(path)
    return paths


def explain_report_errors(output_dir, model, processor, splits: dict, count: int = 6, *, steps=None) -> list[Path]:
    """Add a PNG grid of each split's most confident errors, explained, to the report in `output_dir`.

    `splits`: split name -> `datasets.Dataset` with the `id`, `image` and `text` columns the report's predictions came
    from. The explained class is the predicted one (why the model got it wrong). Each grid is written as
    `errors_explained_<split>.png`, named in the split's `most_confident_errors_explained`, and `eval_report.json` /
    `eval_report.md` are written again. Returns the PNG paths.
    """
    import json

    from ..evaluation.report import REPORT_JSON, REPORT_MARKDOWN, _safe_file_part, render_markdown
    from ..explanations import DEFAULT_STEPS, explain_pairs
    from ..files import atomic_write_text

    output_dir = Path(output_dir)
    report = json.loads((output_dir / REPORT_JSON).read_text(encoding="utf-8"))
    names = report["label_names"]
    temperature = float(getattr(model.config, "calibration_temperature", 1.0) or 1.0)
    written = []
    for split_name, entry in report["splits"].items():
        errors = (entry.get("most_confident_errors") or [])[: max(count, 0)]
        if not errors or split_name not in splits:
            continue
        dataset = splits[split_name]
        row_of_id = {str(example_id): index for index, example_id in enumerate(dataset["id"])}
        rows = [dataset[row_of_id[str(error["id"])]] for error in errors if str(error["id"]) in row_of_id]
        if len(rows) != len(errors):
            continue
        explanations = explain_pairs(
            model,
            processor,
            [row["image"] for row in rows],
            [row["text"] for row in rows],
            # single-label: the predicted class; multi-label: the row's most confident wrong label (`label`)
            targets=[names.index(error.get("label", error["predicted_label"])) for error in errors],
            temperature=temperature,
            steps=steps or DEFAULT_STEPS,
        )
        titles = [
            f"{error['id']}: {error.get('label', error['predicted_label'])} {error['probability']:.2f}"
            + (f" ({error['error']})" if "error" in error else "")
            + f"\n(true: {error['true_label']})"
            for error in errors
        ]
        filename = f"errors_explained_{_safe_file_part(split_name)}.png"
        written.append(save_explanation_grid(output_dir / filename, [r["image"] for r in rows], explanations, titles))
        entry["most_confident_errors_explained"] = filename
    if written:
        from ..evaluation.tables import strict_json

        atomic_write_text(output_dir / REPORT_JSON, strict_json(report))
        atomic_write_text(output_dir / REPORT_MARKDOWN, render_markdown(report))
    return written


# ------------------------------------------------------------------------------------------------ sanity check


def randomized_towers(model, seed: int = 1):
    """A copy of `model` whose two towers (and their projections) are re-drawn at random, the fusion and classifier
    kept: the model-randomisation test of Adebayo et al. (2018). An explanation that still looks right on it
    explains the input, not the model."""
    import torch

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        fresh = type(model)(model.config).eval()
    finally:
        torch.random.set_rng_state(generator_state)
    towers = model.mmfusion.tower_parameter_names(f"{model.base_model_prefix}.")
    state = {name: value for name, value in model.state_dict().items() if name not in towers}
    fresh.load_state_dict(state, strict=False)
    return fresh.to(next(model.parameters()).device)


def demo_sanity_figures(model, processor, images, texts, *, steps: int = 32) -> dict[str, float]:
    """How well explanations of `model` find the demo's cues (`mmfusion.data.demo`: the label is the XOR of the
    picture's colour family and the caption's one warm/cold keyword), on demo pairs.

    - `caption_matters`: the share of pairs whose explained probability moves by at least 0.5 between the empty
      caption (the Integrated Gradients baseline: every word replaced by padding) and the caption. The attributions
      add up to that move, so only there do they have something to rank: a model may read "no keyword" as one of the
      two keywords (train.py's demo model reads it as a warm one), and then a warm keyword rightly gets nothing.
    - `keyword_top1`: among those pairs, the share whose keyword has the largest attribution magnitude among the
      caption's words (chance: about 1 in 4-7 words); `keyword_top1_all`: the same over every pair.
    - `image_deletion`, `filler_deletion`: the mean change of the explained class's probability when the picture is
      replaced by a grey one, and when the caption's filler words are deleted (keyword kept). The colour cue fills
      the picture, so a heat map cannot point at a region of it: deleting the picture is the measure that
      discriminates, with the filler words as the control.
    - `heat_on_background`: the heat map's mean over the coloured background divided by its mean over the grey
      distractor shape (reported, not a criterion: at a coarse feature grid both share cells).
    """
    import torch
    from PIL import Image

    from ..data.demo import COLD_WORDS, WARM_WORDS
    from ..explanations import class_scores, explain_pairs

    keywords = set(WARM_WORDS) | set(COLD_WORDS)
    explanations = explain_pairs(model, processor, images, texts, steps=steps)
    targets = np.array([e.label_id for e in explanations])
    scores = np.array([e.score for e in explanations])

    def scores_for(new_images, new_texts):
        with torch.no_grad():
            inputs = processor(images=new_images, text=new_texts, return_tensors="pt")
            device = next(model.parameters()).device
            logits = model(**{name: value.to(device) for name, value in inputs.items()}).logits
        return class_scores(logits, model.config).cpu().numpy()[np.arange(len(targets)), targets]

    grey = [Image.new("RGB", image.size, (128, 128, 128)) for image in images]
    keyword_only = [" ".join(w for w in text.split() if w in keywords) for text in texts]
    top1 = np.array([e.top_words(1)[:1] == [w] for e, w in zip(explanations, _keywords(texts))])
    matters = np.array([abs(e.score - e.baseline_score) >= 0.5 for e in explanations])
    heat_ratios = []
    for explanation, image in zip(explanations, images):
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
        shape = (pixels.max(-1) - pixels.min(-1)) < 8  # the distractor is grey; the background saturated
        heat = explanation.heatmap_image(image.width, image.height)
        if heat is not None and shape.any() and (~shape).any() and heat[shape].mean() > 0:
            heat_ratios.append(float(heat[~shape].mean() / heat[shape].mean()))
    return {
        "pairs": len(texts),
        "caption_matters": float(matters.mean()),
        "keyword_top1": float(top1[matters].mean()) if matters.any() else float("nan"),
        "keyword_top1_all": float(top1.mean()),
        "image_deletion": float(np.abs(scores - scores_for(grey, list(texts))).mean()),
        "filler_deletion": float(np.abs(scores - scores_for(list(images), keyword_only)).mean()),
        "heat_on_background": float(np.median(heat_ratios)) if heat_ratios else float("nan"),
        "mean_abs_text_delta": float(np.mean([abs(e.text_delta) for e in explanations if e.text_delta is not None])),
    }


def _keywords(texts):
    from ..data.demo import COLD_WORDS, WARM_WORDS

    keywords = set(WARM_WORDS) | set(COLD_WORDS)
    return [next(w for w in text.split() if w in keywords) for text in texts]


def passes_demo_sanity(figures: dict) -> bool:
    """The criterion: the caption matters (see `demo_sanity_figures`) in at least a quarter of the pairs and there
    the keyword ranks first in at least 80 % of them; deleting the picture moves the score by at least 0.2 and 5 times
    as much as deleting the filler words."""
    return (
        figures["caption_matters"] >= 0.25
        and figures["keyword_top1"] >= 0.8
        and figures["image_deletion"] >= 0.2
        and figures["image_deletion"] >= 5 * figures["filler_deletion"]
    )


__all__ = [
    "demo_sanity_figures",
    "explain_report_errors",
    "draw_explanation",
    "explanation_filename",
    "heatmap_overlay",
    "highlighted_words",
    "passes_demo_sanity",
    "randomized_towers",
    "save_explanation_grid",
    "save_explanation_png",
    "write_explanations",
]
