"""Which modality drove a decision: predict again with the image blanked, the caption emptied, and both.

"Blanked" and "emptied" mean what they mean in the evaluation report (`mmfusion.ablation`). The modality whose
removal moves the predicted class's probability most is the one the decision rests on; when removing either moves it
a lot, the decision needs both together (the demo task is built that way: neither cue alone says anything).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ablation import ABLATIONS, EMPTY_TEXT, blank_image
from .images import ImageInput, load_image

# A drop of the predicted class's probability below this is "no effect".
NEGLIGIBLE_DROP = 0.05
# One modality "dominates" when removing it moves the probability at least this many times more than the other.
DOMINANCE_RATIO = 2.0


@dataclass
class ModalityReport:
    """Class probabilities under each ablation and what they say.

    Attributes:
        probabilities (`dict[str, dict[str, float]]`): ablation name (`full`, `image_blanked`, `text_emptied`,
            `both_blanked`) -> class probabilities.
        predicted_label (`str`): the class predicted from the full input.
        image_drop (`float`): how much the predicted class's probability falls when the image is blanked.
        text_drop (`float`): the same when the caption is emptied.
        driver (`str`): `"image"`, `"text"`, `"both"` or `"neither"`.
        explanation (`str`): one sentence saying so, with the numbers.
    """

    probabilities: dict[str, dict[str, float]]
    predicted_label: str
    image_drop: float
    text_drop: float
    driver: str
    explanation: str


def modality_report(predictor, image: ImageInput, text: str | None) -> ModalityReport:
    """Predict `(image, text)` and its three ablations in one batch, and say which modality the decision rests on."""
    image = load_image(image)
    blank = blank_image(image.size)
    images, texts = [], []
    for blank_the_image, empty_the_text in ABLATIONS.values():
        images.append(blank if blank_the_image else image)
        texts.append(EMPTY_TEXT if empty_the_text else (text or ""))
    records = predictor.predict_batch(images, texts)
    probabilities = {name: record["probabilities"] for name, record in zip(ABLATIONS, records)}
    predicted = records[0]["label"]
    full = probabilities["full"][predicted]
    image_drop = full - probabilities["image_blanked"][predicted]
    text_drop = full - probabilities["text_emptied"][predicted]
    driver = decisive_modality(image_drop, text_drop)
    return ModalityReport(
        probabilities=probabilities,
        predicted_label=predicted,
        image_drop=image_drop,
        text_drop=text_drop,
        driver=driver,
        explanation=explain(driver, predicted, full, image_drop, text_drop),
    )


def decisive_modality(image_drop: float, text_drop: float) -> str:
    """`"image"`, `"text"`, `"both"` or `"neither"` from the two probability drops."""
    if max(image_drop, text_drop) < NEGLIGIBLE_DROP:
        return "neither"
    if image_drop >= DOMINANCE_RATIO * max(text_drop, 0.0):
        return "image"
    if text_drop >= DOMINANCE_RATIO * max(image_drop, 0.0):
        return "text"
    return "both"


def explain(driver: str, label: str, probability: float, image_drop: float, text_drop: float) -> str:
    numbers = (
        f"P({label}) = {probability:.2f}; blanking the image changes it by {-image_drop:+.2f}, "
        f"emptying the caption by {-text_drop:+.2f}."
    )
    sentences = {
        "image": "The image drove the decision.",
        "text": "The caption drove the decision.",
        "both": "The decision needs both the image and the caption together.",
        "neither": "Neither modality alone moves the decision much.",
    }
    return f"{sentences[driver]} {numbers}"
