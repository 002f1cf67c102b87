"""Which modality drove one decision: predict again with the image blanked, the caption emptied, and both.

Blanking and the verdict are the evaluation report's (`mmfusion.evaluation.ablation`), applied to one pair: the
score is the predicted class's probability and chance is 1 / number of classes (multi-label: the most probable
predicted label's sigmoid, chance 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..evaluation.ablation import ABLATION_TITLES, ABLATIONS, EMPTY_TEXT, VERDICTS, blank_image, modality_verdict
from .images import ImageInput, load_image


@dataclass
class ModalityReport:
    """Class probabilities under each ablation and what they say.

    Attributes:
        probabilities (`dict[str, dict[str, float]]`): ablation name (`full`, `image_blanked`, `text_emptied`,
            `both_blanked`) -> class probabilities.
        predicted_label (`str`): the class predicted from the full input.
        image_drop (`float`): how much the predicted class's probability falls when the image is blanked.
        text_drop (`float`): the same when the caption is emptied.
        verdict (`str`): a key of `mmfusion.evaluation.ablation.VERDICTS` (`"text"`, `"image"`, `"both"`, ...).
        explanation (`str`): one sentence saying so, with the numbers.
    """

    probabilities: dict[str, dict[str, float]]
    predicted_label: str
    image_drop: float
    text_drop: float
    verdict: str
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
    if "labels" in records[0]:  # multi-label: the most probable label predicted (else the most probable); sigmoid
        full_probabilities = probabilities["full"]
        predicted = (records[0]["labels"] or [max(full_probabilities, key=full_probabilities.get)])[0]
    else:
        predicted = records[0]["label"]
    full = probabilities["full"][predicted]
    image_drop = full - probabilities["image_blanked"][predicted]
    text_drop = full - probabilities["text_emptied"][predicted]
    chance = 0.5 if "labels" in records[0] else 1.0 / len(probabilities["full"])
    verdict = modality_verdict(
        full, probabilities["image_blanked"][predicted], probabilities["text_emptied"][predicted], chance
    )
    return ModalityReport(
        probabilities=probabilities,
        predicted_label=predicted,
        image_drop=image_drop,
        text_drop=text_drop,
        verdict=verdict,
        explanation=explain(verdict, predicted, full, image_drop, text_drop),
    )


def explain(verdict: str, label: str, probability: float, image_drop: float, text_drop: float) -> str:
    return (
        f"The decision {VERDICTS[verdict]}. P({label}) = {probability:.2f}; with the "
        f"{ABLATION_TITLES['image_blanked']} it changes by {-image_drop:+.2f}, with the "
        f"{ABLATION_TITLES['text_emptied']} by {-text_drop:+.2f}."
    )
