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
from dataclasses import dataclass
from typing import Any

from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from ..processing_mmfusion import to_rgb

# Same default as PIL (about 89 megapixels, ~256 MiB as 8-bit RGB): enough for any photo or meme, far below the
# size at which a crafted "decompression bomb" file exhausts memory.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

# Formats whose RGB files `datasets.Image()` decodes to exactly what we want, so they can be stored by path.
_FORMATS_STORED_BY_PATH = {"JPEG", "PNG", "WEBP", "BMP", "MPO"}
_NO_ROTATION = (None, 1)


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


def open_image(source: str | os.PathLike | bytes, *, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Open an image file (path or encoded bytes) and decode its first frame, refusing oversized images.

    The pixel limit is checked from the header, before any pixel is decoded, so a decompression bomb costs nothing.
    PIL's own guard (`PIL.Image.MAX_IMAGE_PIXELS`) only *warns* between 1x and 2x its limit; here its limit is an
    error too. Safe to call from several threads.

    Args:
        source (`str`, `os.PathLike` or `bytes`):
            Path of the image file, or its encoded bytes.
        max_pixels (`int`, *optional*, defaults to `DEFAULT_MAX_IMAGE_PIXELS`):
            Largest accepted `width * height`. `None` disables the check (not recommended for untrusted data).

    Returns:
        `PIL.Image.Image`: the loaded image (first frame), still in its own mode. The caller should close it.

    Raises:
        `ImageCheckError`: the file is missing, unreadable, truncated/corrupt or larger than `max_pixels`.
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
        # PIL refuses more than 2x `Image.MAX_IMAGE_PIXELS` here, and only warns above 1x. The warning band is checked
        # below from the size; turning the warning into an error with `warnings.catch_warnings` would not be safe:
        # images are opened by several threads at once, and that context manager swaps process-wide filters.
        image = Image.open(fp)
        width, height = image.size
        for limit, setting in (
            (max_pixels, "max_image_pixels"),
            (Image.MAX_IMAGE_PIXELS, "PIL.Image.MAX_IMAGE_PIXELS"),
        ):
            if limit is not None and width * height > limit:
                raise ImageCheckError(
                    f"image {name} has {width}x{height} = {width * height} pixels, more than the limit of {limit} "
                    f"(decompression-bomb guard; raise `{setting}` if the image is genuine)"
                )
        image.load()  # decodes the first frame: truncated or corrupt data fails here, not mid-training
    except ImageCheckError:
        if image is not None:
            image.close()
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        if image is not None:
            image.close()
        raise ImageCheckError(
            f"image {name} is too large (decompression-bomb guard): {err}. Raise `PIL.Image.MAX_IMAGE_PIXELS` "
            "and `max_image_pixels` if the image is genuine."
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, MemoryError) as err:
        if image is not None:
            image.close()
        hint = " (ImageFile.LOAD_TRUNCATED_IMAGES is set)" if ImageFile.LOAD_TRUNCATED_IMAGES else ""
        raise ImageCheckError(f"cannot read image {name}: {type(err).__name__}: {err}{hint}") from err
    return image


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
    source: str | os.PathLike | bytes | dict | Image.Image, *, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
) -> PreparedImage:
    """Check one image and choose how to store it in a `datasets.Image` column (see the module docstring).

    Args:
        source (`str`, `os.PathLike`, `bytes`, `dict` or `PIL.Image.Image`):
            Path of the image, its encoded bytes, a `{"path", "bytes"}` dict as stored by `datasets.Image` (bytes
            win over the path, as in `datasets`), or an image already in memory (always stored as PNG bytes).
        max_pixels (`int`, *optional*):
            See `open_image`.

    Raises:
        `ImageCheckError`: see `open_image`.
    """
    if isinstance(source, Image.Image):
        # An already decoded image (e.g. from a Python object column): nothing to open, only to normalise.
        rgb = normalize_image(source)
        width, height = rgb.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageCheckError(f"image has {width}x{height} pixels, more than the limit of {max_pixels}")
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
    with open_image(source, max_pixels=max_pixels) as image:
        if _is_stored_as_is(image):
            if isinstance(source, str):
                value = {"path": os.path.abspath(source), "bytes": None}
            else:
                value = {"path": None, "bytes": bytes(source)}
            return PreparedImage(value=value, converted=False, size=image.size)
        rgb = normalize_image(image)
        # "path": None, because `datasets.Image.encode_example` drops the bytes of a dict whose path exists on disk.
        return PreparedImage(value={"path": None, "bytes": encode_png(rgb)}, converted=True, size=rgb.size)
