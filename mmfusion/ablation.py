"""What "blanking a modality" means, shared by the evaluation report's ablation and the demo app.

A blanked image is a uniform image of the ImageNet mean colour: after normalisation its pixels are (close to) zero,
the input that carries no visual information. An emptied caption is the empty string: the tokenizer's [CLS] [SEP].
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


def blank_image(size: tuple[int, int] = (224, 224)) -> Image.Image:
    return Image.new("RGB", size, IMAGENET_MEAN_RGB)
