"""Untrusted image bytes → a decoded RGB image, refusing anything that is not a reasonably sized image.

Checks run cheapest first and *before* any pixel is decoded: the byte count, the file's magic bytes (the
filename and the client's Content-Type are ignored), then the pixel count read from the header by Pillow
(``Image.open`` parses only the header), so a decompression bomb (a few KB declaring 20 000 × 20 000 pixels)
is refused without allocating its pixels.
"""

from __future__ import annotations

import io
from typing import NamedTuple

import torch

from alexnet.data.images import decode_rgb, elongation_problem, oriented_size
from alexnet.errors import ImageError

MAX_BYTES = 10_000_000  # 10 MB
MAX_PIXELS = 40_000_000  # e.g. 8000 × 5000; far above what the models need, far below a bomb

# Magic bytes of the formats accepted (what the browser can also show): JPEG, PNG, GIF, BMP, WebP, TIFF.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


class UploadError(ImageError):
    """An upload refused before or while decoding; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def sniff(data: bytes) -> str:
    """The image format named by ``data``'s magic bytes; :class:`UploadError` (415) for anything else."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, fmt in _SIGNATURES:
        if data.startswith(magic):
            return fmt
    raise UploadError("not an image: accepted types are JPEG, PNG, GIF, BMP, WebP and TIFF", status=415)


def header_size(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) as the image is shown (its EXIF orientation applied), from the header only: no pixel data
    is decoded."""
    import re

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return oriented_size(im)
    except Image.DecompressionBombError as e:  # Pillow's own header check (> 2 × its limit): a bomb for sure
        found = re.search(r"\((\d+) pixels\)", str(e))  # "Image size (900000000 pixels) exceeds limit …"
        size = f"{int(found[1]) / 1e6:,.0f} megapixels" if found else "a decompression bomb"
        raise UploadError(
            f"image too large: {size} (limit {max_pixels / 1e6:.0f}); refused before decoding", status=413
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UploadError(f"not a readable image ({type(e).__name__})", status=415) from None


class Upload(NamedTuple):
    """A decoded upload: ``image`` (``uint8`` RGB 3×H×W) and the file's own ``width`` and ``height`` (a large
    JPEG is decoded at reduced size)."""

    image: torch.Tensor
    width: int
    height: int


def decode_upload(
    data: bytes, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS, min_side: int | None = None
) -> Upload:
    """Validate untrusted bytes and decode them to a ``uint8`` RGB tensor (3×H×W). ``min_side``: a JPEG at
    least twice that on its shorter side is decoded at reduced size, keeping the shorter side ≥ ``min_side``, as
    ``alexnet predict`` and ``eval`` decode it (:func:`alexnet.data.images.decode_rgb`): the same input, and a
    12-megapixel photo held as 0.2 megapixels."""
    if not data:
        raise UploadError("empty upload: choose an image file")
    if len(data) > max_bytes:
        raise UploadError(
            f"file too large: {len(data) / 1e6:.1f} MB (limit {max_bytes / 1e6:.0f} MB)", status=413
        )
    fmt = sniff(data)
    width, height = header_size(data, max_pixels)
    if problem := elongation_problem(width, height):
        raise UploadError(f"image refused: {problem}", status=422)
    if width * height > max_pixels:
        raise UploadError(
            f"image too large: {width}×{height} = {width * height / 1e6:.0f} megapixels "
            f"(limit {max_pixels / 1e6:.0f}); refused before decoding",
            status=413,
        )
    try:
        return Upload(decode_rgb(data, f"uploaded {fmt}", min_side=min_side), width, height)
    except ImageError as e:
        raise UploadError(str(e), status=415) from None
