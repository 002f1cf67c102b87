"""Turn what a user hands the predictor (a path, encoded bytes, an array or a PIL image) into an RGB PIL image.

Files are opened with the data layer's checks (`mmfusion.data.images.open_image`): a missing, corrupt or oversized file
fails with an error that names it, exactly as a bad row of a dataset would, and EXIF rotation is applied the same way
as at training time.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from ..data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageCheckError, normalize_image, open_image
from ..processing_mmfusion import rescale_to_uint8

ImageInput = Image.Image | str | os.PathLike | bytes | np.ndarray

__all__ = ["ImageCheckError", "ImageInput", "load_image"]


def load_image(image: ImageInput, *, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Return `image` as an RGB `PIL.Image`.

    Args:
        image (`PIL.Image.Image`, `str`, `os.PathLike`, `bytes` or `np.ndarray`):
            A PIL image (any mode), the path of an image file, its encoded bytes, or an `(H, W)`/`(H, W, C)` uint8
            array.
        max_image_pixels (`int`, *optional*):
            Decompression-bomb guard for files and bytes (see `mmfusion.data.images.open_image`).

    Raises:
        `ImageCheckError` (a `ValueError`): the file is missing, unreadable or too large; the message names it.
        `TypeError`: `image` is none of the accepted types.
    """
    if isinstance(image, Image.Image):
        return normalize_image(image)
    if isinstance(image, np.ndarray):
        return normalize_image(Image.fromarray(rescale_to_uint8(image)))
    if isinstance(image, (str, os.PathLike, bytes, bytearray)):
        with open_image(
            bytes(image) if isinstance(image, bytearray) else image, max_image_pixels=max_image_pixels
        ) as opened:
            # normalize_image returns the same object for RGB input; copy so the file handle can close.
            return normalize_image(opened).copy()
    raise TypeError(f"Expected a PIL image, a file path, encoded bytes or a numpy array; got {type(image).__name__}")
