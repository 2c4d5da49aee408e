"""Decode any image file to an RGB ``uint8`` tensor (3×H×W), with a clear error for anything else.

torchvision.io decodes JPEG (incl. CMYK and grayscale) and PNG (incl. 16-bit, palette, alpha); anything it cannot
read falls back to Pillow (BMP, TIFF, GIF, WebP …). Alpha is dropped, 16-bit is scaled to 8-bit; of an animated
image (GIF, WebP, APNG) only the first frame is used. An EXIF orientation is applied (a phone's portrait photo is
stored sideways with a tag saying so): the network sees the image upright, as a browser or a viewer shows it.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image

from alexnet.errors import ImageError

# What a folder of photos given to `predict` is searched for (torchvision's IMG_EXTENSIONS, and GIF); a data set's
# class folders take every file, so that a stray file is reported rather than skipped (alexnet.data.folders).
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
MAX_PIXELS = 178_956_970  # Pillow's decompression-bomb limit
# AlexNet §2 rescales the shorter side to 256: a 1×1,000,000 image (3 KB as a PNG) would become 256×256 M pixels.
# No photograph is 100 times longer than wide; a panorama is about 10.
MAX_ASPECT = 100


def elongation_problem(width: int, height: int) -> str | None:
    """Why a ``width``×``height`` image cannot be rescaled to a short side of 256 px, or ``None``."""
    if max(width, height) > MAX_ASPECT * max(1, min(width, height)):
        return (
            f"{width}×{height} is more than {MAX_ASPECT} times longer than wide: rescaled to a short side of "
            f"256 px (AlexNet §2) it would be {256 * max(width, height) // max(1, min(width, height)):,} px long"
        )
    return None


# torchvision 0.29 announces that torchvision.io will move to TorchCodec; its decoders still work and are fast.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")


def decode_rgb(
    data: bytes | torch.Tensor, name: str = "<bytes>", *, min_side: int | None = None
) -> torch.Tensor:
    """Decode encoded image bytes to a ``uint8`` RGB tensor of shape 3×H×W.

    ``min_side``: the caller will shrink the image so its shorter side is ``min_side`` anyway (AlexNet §2: 256),
    so a large JPEG may be decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (libjpeg's scaled IDCT), which is
    several times faster; the result's shorter side is still ≥ ``min_side``. Other formats decode at full size.
    """
    if len(data) == 0:  # torch.frombuffer refuses empty buffers
        raise ImageError(f"{name}: empty file, not an image")
    raw = data if isinstance(data, torch.Tensor) else torch.frombuffer(bytearray(data), dtype=torch.uint8)
    magic = bytes(raw[:8].tolist())
    if min_side is not None and raw.numel() > 3 and magic.startswith(JPEG_SOI):
        head = bytes(raw[:JPEG_HEADER_SCAN].numpy().tobytes())
        size = jpeg_size(head)
        if size is not None and min(size) >= 2 * min_side and elongation_problem(*size) is None:
            return _decode_jpeg_reduced(bytes(raw.numpy().tobytes()), min_side, name)
    if magic.startswith(GIF_MAGIC):
        # torchvision decodes every frame of a GIF (frames×3×H×W: a small file of many frames is a memory
        # bomb); Pillow decodes only the first, the one we use
        img = _decode_with_pil(bytes(raw.numpy().tobytes()), name)
    else:
        try:
            img = decode_image(raw, mode=ImageReadMode.RGB, apply_exif_orientation=True)
        except (RuntimeError, ValueError):
            img = _decode_with_pil(bytes(raw.numpy().tobytes()), name)
        else:
            if not (magic.startswith(JPEG_SOI) or magic == PNG_MAGIC):  # torchvision turns only those two
                img = orient(img, _pil_orientation(bytes(raw.numpy().tobytes())))
    if img.ndim == 4 and img.shape[0] >= 1:  # any other animated format torchvision decodes: the first frame
        img = img[0]
    if img.dtype != torch.uint8:  # 16-bit PNG
        img = (img.to(torch.float32) / 257.0).round().clamp(0, 255).to(torch.uint8)
    if img.ndim != 3 or img.shape[0] != 3 or img.shape[1] < 1 or img.shape[2] < 1:
        raise ImageError(f"{name}: decoded to an unexpected shape {tuple(img.shape)}")
    if problem := elongation_problem(img.shape[2], img.shape[1]):
        raise ImageError(f"{name}: {problem}")
    return img


JPEG_SOI = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GIF_MAGIC = b"GIF8"  # GIF87a, GIF89a
JPEG_HEADER_SCAN = 1 << 17  # the frame header follows the APPn segments (EXIF ≤ 64 KiB), well within this
# Start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


EXIF_ORIENTATION = 0x0112  # the TIFF tag: 1 upright; 2-8 a mirror and/or a turn; 5-8 swap width and height
APP1 = 0xE1  # the segment that holds a JPEG's EXIF data


def _segments(head: bytes) -> Iterator[tuple[int, int, int]]:
    """``(marker, payload start, payload end)`` of a JPEG's marker segments up to its frame header (inclusive),
    as far as ``head`` reaches; stops early at anything malformed."""
    i = 2
    while i + 4 <= len(head):
        if head[i] != 0xFF:
            return
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(head[i + 2 : i + 4], "big")
        if marker == 0xDA or length < 2:  # start of scan before any frame header: malformed
            return
        yield marker, i + 4, min(i + 2 + length, len(head))
        if marker in _SOF:
            return
        i += 2 + length


def jpeg_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) as stored, from a JPEG's frame header by walking its marker segments (no decoding, no
    Pillow object: this runs for every training image); ``None`` if not found in ``head``."""
    for marker, start, end in _segments(head):
        if marker in _SOF and end - start >= 5:
            height = int.from_bytes(head[start + 1 : start + 3], "big")
            width = int.from_bytes(head[start + 3 : start + 5], "big")
            return width, height
    return None


def jpeg_orientation(head: bytes) -> int:
    """The EXIF orientation (1-8) in a JPEG's APP1 segment; 1 (upright) when there is none or it is malformed.

    EXIF 2.3 §4.6.4: the segment holds ``Exif\\0\\0`` and a TIFF structure (byte order, 42, the offset of IFD0),
    whose IFD0 lists 12-byte entries ``(tag, type, count, value)``; orientation is a SHORT.
    """
    for marker, start, end in _segments(head):
        if marker == APP1 and head[start : start + 6] == b"Exif\0\0":
            return _tiff_orientation(head, start + 6, end)
    return 1


def _tiff_orientation(head: bytes, tiff: int, end: int) -> int:
    """The orientation entry of the IFD0 of the TIFF structure at ``head[tiff:end]``; 1 if there is none."""
    order = head[tiff : tiff + 2]
    if order not in (b"II", b"MM"):
        return 1
    endian: Any = "little" if order == b"II" else "big"

    def number(at: int, size: int) -> int:
        return int.from_bytes(head[at : at + size], endian)

    ifd = tiff + number(tiff + 4, 4)
    if ifd + 2 > end:
        return 1
    for entry in range(ifd + 2, min(ifd + 2 + 12 * number(ifd, 2), end - 11), 12):
        if number(entry, 2) == EXIF_ORIENTATION and number(entry + 2, 2) == 3:  # type 3: SHORT
            value = number(entry + 8, 2)
            return value if 1 <= value <= 8 else 1
    return 1


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """``image`` (…×H×W) as shown under EXIF ``orientation`` (EXIF 2.3 §4.6.4, tag 274): 2 mirrored, 3 turned
    180°, 4 flipped, 5 transposed, 6 turned 90° clockwise, 7 transposed across the other diagonal, 8 turned 90°
    counter-clockwise; 1 (and anything else) as stored."""
    if orientation in (5, 6, 7, 8):
        image = image.transpose(-2, -1)
    flips = {2: (-1,), 3: (-2, -1), 4: (-2,), 6: (-1,), 7: (-2, -1), 8: (-2,)}.get(orientation)
    return image.flip(flips) if flips else image.contiguous()


def _pil_orientation(data: bytes) -> int:
    """The EXIF orientation in an image file's header as Pillow reads it (WebP and the other formats torchvision
    decodes without turning them); 1 when there is none or Pillow cannot read the header."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return _header_orientation(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):  # decoded already: as stored
        return 1


def _header_orientation(image: Any) -> int:
    """The EXIF orientation (1-8) an opened Pillow image's header carries; 1 when none or malformed. Not
    Pillow's ``getexif()``, which decodes a PNG's pixels to look for EXIF data after them: a decompression bomb
    must never get that far."""
    import struct

    from PIL import Image

    raw = image.info.get("exif")
    if not raw:
        return 1
    exif = Image.Exif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns of corrupt EXIF data; it is only ignored here
            exif.load(raw)
            value = exif.get(EXIF_ORIENTATION, 1)
    except (struct.error, OSError, ValueError, SyntaxError):
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def oriented_size(image: Any) -> tuple[int, int]:
    """(width, height) of an opened Pillow image as it is shown: swapped when its EXIF orientation turns it by
    90° (5-8). Reads the header only."""
    if image.format == "TIFF":  # Pillow's TIFF reader turns the image itself and reports the size as shown
        return image.width, image.height
    turned = _header_orientation(image) in (5, 6, 7, 8)
    return (image.height, image.width) if turned else (image.width, image.height)


def _decode_jpeg_reduced(data: bytes, min_side: int, name: str) -> torch.Tensor:
    """A JPEG at least twice ``min_side`` on its shorter side, decoded at the smallest 1/2ᵏ scale that keeps the
    shorter side ≥ ``min_side`` (Pillow's ``draft``), turned as its EXIF orientation says."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ImageError(f"{name}: {im.width}×{im.height} pixels is too large")
            im.draft("RGB", (min_side, min_side))  # scale s.t. both sides stay ≥ min_side
            im.load()
            rgb = ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{name}: not a readable image ({type(e).__name__}: {e})") from None
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _decode_with_pil(data: bytes, name: str) -> torch.Tensor:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ImageError(f"{name}: {im.width}×{im.height} pixels is too large")
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32) / 257.0
                im = Image.fromarray(arr.clip(0, 255).astype(np.uint8), mode="L")
            rgb = im.convert("RGB")
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (unknown or unsupported format)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(f"{name}: not a readable image ({type(e).__name__}: {e})") from None
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def read_image(path: str | Path, *, min_side: int | None = None) -> torch.Tensor:
    """Read and decode an image file to a ``uint8`` RGB tensor (3×H×W); :class:`ImageError` if it is not one.

    ``min_side``: allow reduced-size JPEG decoding that keeps the shorter side ≥ ``min_side`` (see
    :func:`decode_rgb`)."""
    return decode_rgb(read_bytes(path), str(path), min_side=min_side)


def read_bytes(path: str | Path) -> bytes:
    """A file's bytes; :class:`ImageError` (with the reason) if it cannot be read."""
    p = Path(path)
    try:
        return p.read_bytes()
    except IsADirectoryError:
        raise ImageError(f"{p}: is a folder, not an image file") from None
    except OSError as e:
        raise ImageError(f"{p}: cannot read ({e.strerror or e})") from None
