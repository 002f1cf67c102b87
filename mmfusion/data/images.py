"""Safe image opening for dataset builds.

Every image is opened and fully decoded once, when a dataset is built, so that a missing, corrupt or oversized file
is reported at load time (with the file, line and id of the row) instead of crashing a training run hours later.

What ends up in the `datasets.Image` column:

- an image that `datasets.Image()` already decodes correctly (8-bit RGB, no EXIF rotation, a single frame, a common
  format) is stored by **path** (no copy). On decode, `datasets` 5 opens the path, calls `load()` and applies
  `ImageOps.exif_transpose` when the file carries an orientation tag, so these come back as they are on disk.
- anything else (L, P, RGBA, CMYK, 16-bit, EXIF-rotated, animated GIF/WebP...) is stored as the **bytes of a
  normalised RGB PNG**: first frame, EXIF rotation applied, converted with `to_rgb` (16-bit rescaled rather than
  clipped, alpha composited on white). `datasets.Image(mode="RGB")` would instead use PIL's plain `convert("RGB")`,
  which clips 16-bit images to white and drops alpha onto black, so the conversion is done here, once.

Either way `dataset[i]["image"]` is an RGB `PIL.Image` with the orientation a viewer would show.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from typing import Any

from PIL import ExifTags, Image, ImageFile, ImageOps

from ..processing_mmfusion import to_rgb

# Same default as PIL (about 89 megapixels, ~256 MiB as 8-bit RGB): enough for any photo or meme, far below the
# size at which a crafted "decompression bomb" file exhausts memory.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

# Formats whose RGB files `datasets.Image()` decodes to exactly what we want, so they can be stored by path.
_FORMATS_STORED_BY_PATH = {"JPEG", "PNG", "WEBP", "BMP", "MPO"}
_NO_ROTATION = (None, 1)
_PIL_PIXELS = re.compile(r"\((\d+) pixels\)")


class ImageCheckError(ValueError):
    """An image could not be used. Callers add the row's file, line and id (see `BadRowError`)."""


@dataclass
class PreparedImage:
    """An image checked by `prepare_image`.

    Attributes:
        value (`dict`):
            `{"path": ..., "bytes": ...}`, ready for `datasets.Image().encode_example`.
        converted (`bool`):
            Whether the image was re-encoded as a normalised RGB PNG (otherwise it is stored as is).
        size (`tuple[int, int]`):
            `(width, height)` of the image as it will be decoded (after EXIF rotation).
    """

    value: dict[str, Any]
    converted: bool
    size: tuple[int, int]


def describe_image_source(source: str | os.PathLike | bytes | dict) -> str:
    """A short human-readable name for an image source, used in error messages."""
    if isinstance(source, dict):
        if source.get("path"):
            return str(source["path"])
        return f"<{len(source.get('bytes') or b'')} bytes>"
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    return os.fspath(source)


def open_image(
    source: str | os.PathLike | bytes, *, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
) -> Image.Image:
    """Open an image file (path or encoded bytes) and decode its first frame, refusing oversized images.

    The pixel limit is checked from the header, before any pixel is decoded, so a decompression bomb costs nothing.
    The error quotes our limit and the option that raises it (`max_image_pixels`). Safe to call from several
    threads.

    Args:
        source (`str`, `os.PathLike` or `bytes`):
            Path of the image file, or its encoded bytes.
        max_image_pixels (`int`, *optional*, defaults to `DEFAULT_MAX_IMAGE_PIXELS`):
            Largest accepted `width * height`. `None` disables the check (not recommended for untrusted data).

    Returns:
        `PIL.Image.Image`: the loaded image (first frame), still in its own mode. The caller should close it.

    Raises:
        `ImageCheckError`: the file is missing, unreadable, truncated/corrupt or larger than `max_image_pixels`.
    """
    name = describe_image_source(source)
    if isinstance(source, (bytes, bytearray)):
        fp: Any = io.BytesIO(source)
    else:
        fp = os.fspath(source)
        if not os.path.isfile(fp):
            raise ImageCheckError(f"image file not found: {fp}")
    image = None
    try:
        # PIL itself refuses more than 2x `Image.MAX_IMAGE_PIXELS` here (see `_pil_guard_message`); our own limit is
        # checked from the header right after, before any pixel is decoded.
        image = Image.open(fp)
        check_pixel_limit(name, image.size, max_image_pixels)
        image.load()  # decodes the first frame: truncated or corrupt data fails here, not mid-training
    except ImageCheckError:
        if image is not None:
            image.close()
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise ImageCheckError(_pil_guard_message(name, err, max_image_pixels)) from err
    except Exception as err:
        # Not only OSError/ValueError: PIL's decoders meet arbitrary bytes here and a damaged file can raise almost
        # anything (struct.error, IndexError, ZeroDivisionError, ...). Whatever it is, it is this image's problem.
        if image is not None:
            image.close()
        hint = " (ImageFile.LOAD_TRUNCATED_IMAGES is set)" if ImageFile.LOAD_TRUNCATED_IMAGES else ""
        raise ImageCheckError(f"cannot read image {name}: {type(err).__name__}: {err}{hint}") from err
    return image


def _pil_guard_message(name: str, err: Exception, max_image_pixels: int | None) -> str:
    """PIL refused the image inside `Image.open` (more than 2x `PIL.Image.MAX_IMAGE_PIXELS`), before we saw its size:
    say it against our limit, the option users set, and mention PIL's only when ours would have accepted it."""
    match = _PIL_PIXELS.search(str(err))
    pixels = int(match.group(1)) if match else None
    if pixels is not None and max_image_pixels is not None and pixels <= max_image_pixels:
        return (
            f"image {name} has {pixels} pixels, within max_image_pixels={max_image_pixels} but more than PIL's own "
            f"decompression-bomb guard accepts (2 x PIL.Image.MAX_IMAGE_PIXELS = {2 * Image.MAX_IMAGE_PIXELS}); "
            "raise `PIL.Image.MAX_IMAGE_PIXELS` too if the image is genuine"
        )
    shown = f"{pixels} pixels" if pixels is not None else "too many pixels"
    return (
        f"image {name} has {shown}, more than the limit of max_image_pixels={max_image_pixels} "
        "(decompression-bomb guard); pass a larger `max_image_pixels` if the image is genuine"
    )


def check_pixel_limit(name: str, size: tuple[int, int], max_image_pixels: int | None) -> None:
    """Refuse an image of `size` above `max_image_pixels` (the decompression-bomb guard), naming the option.

    PIL's own limit (`PIL.Image.MAX_IMAGE_PIXELS`, by default the same number) is an error too, although PIL only
    warns between 1x and 2x of it: a user who lowered it meant it. Ours is checked first, so with the defaults the
    message names the option users set.
    """
    width, height = size
    for limit, setting in (
        (max_image_pixels, "max_image_pixels"),
        (Image.MAX_IMAGE_PIXELS, "PIL.Image.MAX_IMAGE_PIXELS"),
    ):
        if limit is not None and width * height > limit:
            raise ImageCheckError(
                f"image {name} has {width}x{height} = {width * height} pixels, more than the limit of "
                f"{setting}={limit} (decompression-bomb guard); raise `{setting}` if the image is genuine"
            )


def normalize_image(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation and convert to 8-bit RGB (`to_rgb`). Returns a new image for non-RGB input."""
    if image.getexif().get(ExifTags.Base.Orientation) not in _NO_ROTATION:
        image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def _is_stored_as_is(image: Image.Image) -> bool:
    return (
        image.mode == "RGB"
        and image.format in _FORMATS_STORED_BY_PATH
        and not getattr(image, "is_animated", False)
        and image.getexif().get(ExifTags.Base.Orientation) in _NO_ROTATION
    )


def encode_png(image: Image.Image) -> bytes:
    """Encode an image as PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def prepare_image(
    source: str | os.PathLike | bytes | dict | Image.Image, *, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
) -> PreparedImage:
    """Check one image and choose how to store it in a `datasets.Image` column (see the module docstring).

    Args:
        source (`str`, `os.PathLike`, `bytes`, `dict` or `PIL.Image.Image`):
            Path of the image, its encoded bytes, a `{"path", "bytes"}` dict as stored by `datasets.Image` (bytes
            win over the path, as in `datasets`), or an image already in memory (always stored as PNG bytes).
        max_image_pixels (`int`, *optional*):
            See `open_image`.

    Raises:
        `ImageCheckError`: see `open_image`.
    """
    if isinstance(source, Image.Image):
        # An already decoded image (e.g. from a Python object column): nothing to open, only to normalise.
        check_pixel_limit("in memory", source.size, max_image_pixels)
        rgb = normalize_image(source)
        return PreparedImage(value={"path": None, "bytes": encode_png(rgb)}, converted=True, size=rgb.size)
    if isinstance(source, dict):
        if source.get("bytes") is not None:
            source = source["bytes"]
        elif source.get("path") is not None:
            source = source["path"]
        else:
            raise ImageCheckError("image has neither a path nor bytes")
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, (str, bytes, bytearray)):
        raise ImageCheckError(f"unsupported image value of type {type(source).__name__} (expected a path or bytes)")
    with open_image(source, max_image_pixels=max_image_pixels) as image:
        if _is_stored_as_is(image):
            if isinstance(source, str):
                value = {"path": os.path.abspath(source), "bytes": None}
            else:
                value = {"path": None, "bytes": bytes(source)}
            return PreparedImage(value=value, converted=False, size=image.size)
        rgb = normalize_image(image)
        # "path": None, because `datasets.Image.encode_example` drops the bytes of a dict whose path exists on disk.
        return PreparedImage(value={"path": None, "bytes": encode_png(rgb)}, converted=True, size=rgb.size)
