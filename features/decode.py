"""Image decoding: a file (or an open binary file) to 8-bit RGB pixels, upright, at the side a backend takes.

:func:`decode_image` is the one image-decode helper of the package: :mod:`features.extract` decodes every image of a
run with it, and in-memory callers (prediction, serving) decode uploads with it, so both see the same pixels.
:func:`load_image` returns the same pixels as a uint8 tensor in the layout the backends take.
"""

from __future__ import annotations

import os
from typing import IO

import numpy as np
import torch
from PIL import Image, ImageOps

from features.errors import ImageTooLargeError

__all__ = ["decode_image", "load_image"]

#: EXIF orientations (tag 0x0112) that turn the stored image by 90 degrees: width and height swap on display.
_SIDEWAYS = (5, 6, 7, 8)
#: Integer greyscale modes holding more than 8 bits: scaled to 8 bits, not clipped at 255 (which whitens them).
_WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _orientation(image: Image.Image) -> int:
    """The image's EXIF orientation (1 = upright); an unreadable EXIF block counts as upright, as viewers treat it."""
    try:
        return int(image.getexif().get(0x0112, 1) or 1)
    except Exception:  # PIL's EXIF parser raises many types on damaged metadata; the pixels may still be fine
        return 1


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; 16-bit (``I;16*``) and 32-bit integer (``I``, read as 16-bit data) greyscale scaled by 1/257."""
    if image.mode in _WIDE_GREY:
        wide = np.asarray(image).astype(np.float32)
        image = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L")
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_image(path: str | os.PathLike[str] | IO[bytes], size: int,
                 max_pixels: int | None = None) -> tuple[np.ndarray, int, int]:
    """Decode an image as a photo viewer shows it, as 8-bit RGB resized (stretched) to ``size x size``.

    This is the one image-decode helper of the package. A viewer's picture means: the EXIF orientation applied
    (:func:`PIL.ImageOps.exif_transpose`: a portrait photo stored sideways comes out upright), and 16-bit greyscale
    scaled to 8 bits instead of clipped at 255. Palette, greyscale, CMYK and alpha images go through PIL's
    ``convert("RGB")`` (alpha is dropped).

    Args:
        path: A file path or an open binary file (e.g. ``io.BytesIO`` of an upload).
        size: Side of the output.
        max_pixels: Refuse an image with more pixels than this, judged from its header before any pixel is decoded
            (a small file can declare a huge image: a decompression bomb). ``None``: PIL's own limit only.

    Returns:
        ``(uint8 [size, size, 3], width, height)`` — width and height of the upright image, as displayed.

    Raises:
        ImageTooLargeError: The image has more than ``max_pixels`` pixels (or more than PIL's bomb limit).
    """
    try:
        opened = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"the image is too large to decode ({exc})") from None
    with opened as image:
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageTooLargeError(f"the image is {width}x{height} = {width * height} pixels, more than the "
                                     f"{max_pixels} allowed")
        orientation = _orientation(image)
        if orientation in _SIDEWAYS:
            width, height = height, width
        if image.format == "JPEG":
            image.draft("RGB", (size, size))  # let libjpeg decode at a reduced scale when the image is large
        if orientation != 1:
            image = ImageOps.exif_transpose(image)
        image = _to_rgb(image)
        if image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        array = np.array(image)
    return array, width, height


def load_image(path: str, size: int) -> tuple[torch.Tensor, int, int]:
    """Like :func:`decode_image`, as a uint8 tensor ``[3, size, size]`` (the layout backends take)."""
    array, width, height = decode_image(path, size)
    return torch.from_numpy(array).permute(2, 0, 1), width, height
