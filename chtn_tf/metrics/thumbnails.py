"""Small thumbnails of image files (Pillow) for the examples page and the projector sprite."""

from __future__ import annotations

import base64
import io
from typing import Optional

from PIL import Image, ImageOps


def thumbnail(path: str, *, size: int) -> tuple[Optional[Image.Image], Optional[str]]:
    """``(image, None)``: the file as an RGB image fitting in ``size`` x ``size`` (aspect kept, upright per
    EXIF), or ``(None, reason)`` when the file cannot be read or decoded.
    """
    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, much faster for large photos
            image = ImageOps.exif_transpose(image).convert("RGB")
            image.thumbnail((size, size), Image.Resampling.LANCZOS)
            return image, None
    except FileNotFoundError:
        return None, "file not found"
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError)
        return None, f"cannot be decoded ({type(err).__name__}: {err})"


def jpeg_bytes(image: Image.Image, *, quality: int = 80) -> bytes:
    """``image`` encoded as a baseline JPEG."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def jpeg_data_uri(image: Image.Image, *, quality: int = 80) -> str:
    """``data:image/jpeg;base64,...`` of ``image``: an image embedded in an HTML page."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(image, quality=quality)).decode("ascii")
