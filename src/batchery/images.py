"""Image inputs: read uploaded or base64 bytes into arrays, within limits, off the event loop.

Every failure is a clear 4xx: too many bytes or pixels (a decompression bomb) is 413, a file that is not an
image in an accepted format is 415, an image that cannot be decoded (truncated, corrupt) is 422.
Pillow is imported lazily: `pip install 'batchery[images]'`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from batchery.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from batchery.workers.cpu_pool import CpuPool

#: Media types an upload may declare, and the Pillow format each stands for.
MEDIA_TYPES = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",  # not registered, but common
    "image/webp": "WEBP",
    "image/bmp": "BMP",
    "image/gif": "GIF",
    "image/tiff": "TIFF",
}
#: Declared types that say nothing about the content: the bytes decide.
GENERIC_TYPES = frozenset({"", "application/octet-stream"})


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What an image input may be. Set `image_limits` on a model or pipeline to change them."""

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 25_000_000
    #: Pixels of all the images of one request together (None: no limit beyond `max_pixels` each). Many small
    #: files that each pass `max_pixels` (a 12 KB PNG can hold 40 Mpx) would otherwise decode to gigabytes.
    max_request_pixels: int | None = None
    formats: frozenset[str] = frozenset(MEDIA_TYPES.values())


DEFAULT_LIMITS = ImageLimits()


def check_media_type(content_type: str | None, limits: ImageLimits = DEFAULT_LIMITS) -> None:
    """Raise UnsupportedMediaType (415) when an upload declares a type that is not an accepted image format."""
    declared = (content_type or "").split(";", 1)[0].strip().lower()
    if declared in GENERIC_TYPES:
        return
    if MEDIA_TYPES.get(declared) not in limits.formats:
        accepted = ", ".join(sorted(t for t, f in MEDIA_TYPES.items() if f in limits.formats))
        raise UnsupportedMediaType(f"files of type {declared!r} are not accepted; send one of: {accepted}")


def from_json(item: Any, limits: ImageLimits = DEFAULT_LIMITS) -> bytes:
    """The bytes of an image given in JSON: base64 text, a `data:` URL, or `{"image": base64}`; bytes pass through.

    Raise ValueError (422) for anything else, PayloadTooLarge (413) above `limits.max_bytes`.
    """
    if isinstance(item, bytes | bytearray | memoryview):
        data = bytes(item)
    else:
        if isinstance(item, dict):
            if "image" not in item:
                raise ValueError('an image input must be base64 text or an object {"image": "<base64>"}')
            item = item["image"]
        if not isinstance(item, str):
            raise TypeError(f"an image input must be base64 text, got {type(item).__name__}")
        if item.startswith("data:"):
            item = item.partition(",")[2]
        # Refuse before decoding what is too large anyway. Line breaks (a MIME encoder's, every 76 characters,
        # "\r\n" at worst) are not data: the bound leaves room for them; the exact check follows the decoding.
        most = len(item) * 3 // 4 * 76 // 78
        if most > limits.max_bytes + 3:
            raise PayloadTooLarge(f"the image has at least {most} bytes; the limit is {limits.max_bytes}")
        try:
            data = _b64decode(item)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"the image is not valid base64: {exc}") from exc
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"the image has {len(data)} bytes; the limit is {limits.max_bytes}")
    if not data:
        raise ValueError("the image is empty")
    return data


def _b64decode(text: str) -> bytes:
    """Strict base64, line breaks and spaces allowed: MIME encoders (`base64` on Linux, Python's
    `base64.encodebytes`) break lines every 76 characters."""
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        unwrapped = "".join(text.split())
        if unwrapped == text:
            raise
        return base64.b64decode(unwrapped, validate=True)


def decode(data: bytes, limits: ImageLimits = DEFAULT_LIMITS, *, mode: str = "RGB", max_side: int | None = None) -> Any:
    """Decode `data` into an HxWxC uint8 array in `mode`, shrunk to `max_side` if given. Blocking: call off the loop.

    The size is checked from the header before any pixel is decoded, so a decompression bomb costs nothing.
    The array is the image as viewers show it: turned as its EXIF orientation says (a phone photo taken upright
    is stored sideways with such a tag).
    """
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError("image inputs need Pillow: pip install 'batchery[images]'") from exc
    image = _open(data, limits)
    width, height = image.size
    try:
        if max_side is not None and max(width, height) > max_side:
            image.draft(mode, (max_side, max_side))  # JPEG: decode at a reduced scale, much cheaper
            image.thumbnail((max_side, max_side))
        image.load()  # a corrupt pixel stream fails here (422), before the EXIF orientation is read
        return np.asarray(_converted(_upright(image), mode))
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"the image has too many pixels: {exc}") from exc
    except _CORRUPT as exc:
        raise InvalidInput(f"the image could not be decoded ({exc!r}); check that the file is complete") from exc


def pixels(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> int:
    """Width x height from the header alone (no pixel decoded), with `decode`'s checks and errors."""
    width, height = _open(data, limits).size
    return int(width * height)


def check_request_pixels(datas: Sequence[bytes], limits: ImageLimits) -> None:
    """Raise PayloadTooLarge (413) when one request's images hold more than `limits.max_request_pixels` together.

    Reads headers only; blocking for many files, so call it where `decode` is called (off the loop).
    """
    if limits.max_request_pixels is None or len(datas) < 2:
        return
    total = sum(pixels(data, limits) for data in datas)
    if total > limits.max_request_pixels:
        raise PayloadTooLarge(
            f"the request's {len(datas)} images hold {total} pixels together; the limit is "
            f"{limits.max_request_pixels} per request. Send fewer or smaller images per request"
        )


#: What Pillow raises for truncated and corrupt data, from `open` as well as from decoding.
_CORRUPT = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, ZeroDivisionError, struct.error)


def _open(data: bytes, limits: ImageLimits) -> Any:
    from PIL import Image, UnidentifiedImageError

    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"the image has {len(data)} bytes; the limit is {limits.max_bytes}")
    known = sniff(data)
    try:
        image = Image.open(io.BytesIO(data), formats=sorted(limits.formats))
    except UnidentifiedImageError as exc:
        if known in limits.formats:
            raise InvalidInput(f"the {known} image could not be decoded; check that the file is complete") from exc
        accepted = ", ".join(sorted(limits.formats))
        raise UnsupportedMediaType(f"the file is not an image in an accepted format ({accepted})") from exc
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"the image has too many pixels: {exc}") from exc
    except _CORRUPT as exc:  # a known header followed by garbage: Pillow fails while reading it
        what = f"the {known} image" if known else "the image"
        raise InvalidInput(f"{what} could not be decoded ({exc!r}); check that the file is complete") from exc
    width, height = image.size
    if width * height > limits.max_pixels:
        raise PayloadTooLarge(
            f"the image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}. "
            "Send a smaller image"
        )
    return image


def _upright(image: Any) -> Any:
    """`image` turned as its EXIF orientation tag says; as it is when it has none, or an unreadable one."""
    from PIL import Image

    try:
        orientation = image.getexif().get(_ORIENTATION, 1)
    except _CORRUPT:  # a broken EXIF block says nothing about the pixels: keep them as stored
        return image
    method = _TRANSPOSES.get(orientation)
    return image if method is None else image.transpose(Image.Transpose[method])


_ORIENTATION = 0x0112
#: EXIF orientation -> the `Image.Transpose` that shows the image upright (as `ImageOps.exif_transpose`).
_TRANSPOSES = {
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_270",
    7: "TRANSVERSE",
    8: "ROTATE_90",
}


def _converted(image: Any, mode: str) -> Any:
    """`image` in `mode`, with transparency laid on white and 16/32-bit grey scaled down, not clipped to white.

    Pillow's plain `convert` drops an alpha channel (transparent pixels keep whatever colour they hold, often
    black, so black text on a transparent background vanishes) and clips 16-bit values above 255 to white.
    """
    from PIL import Image

    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        wide = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        # 16-bit modes hold 0-65535; mode "I" (32-bit) may hold 8-bit values too (a TIFF), left as they are.
        if image.mode != "I" or wide.max(initial=0) > 255:
            wide = wide >> 8
        image = Image.fromarray(wide.astype(np.uint8), "L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha and "A" not in mode:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert(mode)


def sniff(data: bytes) -> str | None:
    """The format that `data`'s first bytes announce, if any: tells a corrupt image (422) from a non-image (415)."""
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            if name == "WEBP" and data[8:12] != b"WEBP":
                return None  # another RIFF container (WAV, AVI)
            return name
    return None


_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"RIFF", "WEBP"),
)


async def decode_async(
    data: bytes,
    limits: ImageLimits = DEFAULT_LIMITS,
    *,
    mode: str = "RGB",
    max_side: int | None = None,
    pool: CpuPool | None = None,
) -> Any:
    """`decode` on a thread of `pool` (Pillow releases the GIL), or the loop's default executor."""
    if pool is not None:
        return await pool.run(_decode, data, limits, mode, max_side)
    return await asyncio.to_thread(decode, data, limits, mode=mode, max_side=max_side)


def _decode(data: bytes, limits: ImageLimits, mode: str, max_side: int | None) -> Any:
    return decode(data, limits, mode=mode, max_side=max_side)
