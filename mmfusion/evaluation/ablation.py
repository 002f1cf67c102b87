"""The modality ablation and its verdict: what "blanking" a modality means, and which modality a model relies on.

Used by the evaluation report (over a whole split), the predictor's `modality_report` and the demo app (for one
pair), so that all three blank the same way, read the result with the same rule and say it in the same words.

A blanked image is a uniform image of the ImageNet mean colour: after normalisation its pixels are (close to) zero,
the input that carries no visual information. An emptied caption is the empty string: the tokenizer's [CLS] [SEP].

The verdict measures, for each single-modality ablation, the share of the full input's gain over chance that it
keeps, `(ablated - chance) / (full - chance)`: over a split on the headline metric (AUROC, macro F1, ...), for one
pair on the predicted class's probability (chance = 1 / number of classes).
"""

from __future__ import annotations

from PIL import Image

IMAGENET_MEAN_RGB = (124, 116, 104)  # round(255 * (0.485, 0.456, 0.406))
EMPTY_TEXT = ""
ABLATIONS = {
    "full": (False, False),
    "image_blanked": (True, False),
    "text_emptied": (False, True),
    "both_blanked": (True, True),
}  # name -> (blank the image, empty the text)
ABLATION_TITLES = {
    "full": "image + caption",
    "image_blanked": "image blanked",
    "text_emptied": "caption emptied",
    "both_blanked": "both removed",
}

# The full input must beat chance by GAIN_MARGIN for the ablation to say anything; an ablation that keeps
# >= KEEPS_MOST of the gain over chance "barely matters", one that keeps <= KEEPS_LITTLE removes what is needed.
GAIN_MARGIN = 0.02
KEEPS_MOST = 0.9
KEEPS_LITTLE = 0.5
VERDICTS = {
    "text": "relies on the caption",
    "image": "relies on the image",
    "both": "needs the image and the caption together",
    "either": "gets by with either modality alone",
    "mixed": "uses both modalities, leaning on one",
    "undetermined": "cannot be read: the full input is not clearly better than chance",
}


def blank_image(size: tuple[int, int] = (224, 224)) -> Image.Image:
    return Image.new("RGB", size, IMAGENET_MEAN_RGB)


def share_kept(full: float, ablated: float, chance: float) -> float:
    """The share of the full input's gain over chance that an ablation keeps (1 = all of it, <= 0 = none)."""
    return (ablated - chance) / (full - chance)


def modality_verdict(full: float, image_blanked: float, text_emptied: float, chance: float) -> str:
    """Which modality the score rests on: a key of `VERDICTS`.

    `image_blanked` is the score with only the caption left, `text_emptied` with only the image left.
    """
    if full - chance <= GAIN_MARGIN:
        return "undetermined"
    keeps_text = share_kept(full, image_blanked, chance)
    keeps_image = share_kept(full, text_emptied, chance)
    if keeps_text >= KEEPS_MOST and keeps_image >= KEEPS_MOST:
        return "either"
    if keeps_text >= KEEPS_MOST:
        return "text"
    if keeps_image >= KEEPS_MOST:
        return "image"
    if keeps_text <= KEEPS_LITTLE and keeps_image <= KEEPS_LITTLE:
        return "both"
    return "mixed"


__all__ = [
    "ABLATIONS",
    "ABLATION_TITLES",
    "EMPTY_TEXT",
    "GAIN_MARGIN",
    "IMAGENET_MEAN_RGB",
    "KEEPS_LITTLE",
    "KEEPS_MOST",
    "VERDICTS",
    "blank_image",
    "modality_verdict",
    "share_kept",
]
