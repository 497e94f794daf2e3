"""Safe decoder shared by the indexer and the query: bytes → grayscale working image (and,
when asked, a small RGB version of it for colour).

Pillow reads the header first, so the pixel cap is checked before any pixel is decoded
(decompression bombs), and it handles what OpenCV does not: animated GIF/WebP/PNG (first
frame), CMYK, palette with transparency, 16-bit PNG/TIFF and EXIF orientation.
"""

from __future__ import annotations

import functools
import io
import logging
import re
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from echoimage.errors import DecodeError, ImageTooLargeError, NotAnImageError
from echoimage.features.limits import agree_pillow_limit, too_large
from echoimage.features.sniff import looks_like, sniff_format
from echoimage.types import DecodedImage

log = logging.getLogger(__name__)

__all__ = ["agree_pillow_limit", "decode_image", "register_plugins", "sniff_format",
           "too_large"]

#: the formats that need a plugin, and what reads them
_PLUGIN_FORMATS = {"HEIC": "pillow-heif", "HEIF": "pillow-heif"}


@functools.cache
def register_plugins() -> frozenset[str]:
    """Register the Pillow plugins for the formats Pillow does not read itself (HEIC/HEIF
    through pillow-heif; AVIF is Pillow's own) and return the formats that can be read.

    Called at the first decode, not on import: registering adds openers to Pillow's
    process-wide registry, which a program that only imports EchoImage should not see
    changed. Idempotent.
    """
    readable = {"AVIF"} if features.check("avif") else set()
    try:
        import pillow_heif
    except ImportError:
        log.warning("pillow-heif is not installed: HEIC/HEIF images cannot be read")
    else:
        pillow_heif.register_heif_opener()
        readable |= {"HEIC", "HEIF"}
    return frozenset(readable)


_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def _bomb_message(exc: Image.DecompressionBombError, max_pixels: int) -> str:
    """Pillow's own refusal, said as the cap's (or, when the host program set Pillow's
    guard below the cap, naming that limit)."""
    found = _BOMB_PIXELS.search(str(exc))
    pixels = int(found.group(1)) if found else None
    if pixels is not None and pixels <= max_pixels:
        return (f"image too large: {pixels:,} pixels exceeds Pillow's limit in this program "
                f"(PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,}), below the cap "
                f"of {max_pixels:,}")
    return too_large(pixels, max_pixels)


def _unreadable(fmt: str) -> str | None:
    """Why fmt cannot be read here, or None when it can (or is not a plugin format)."""
    if fmt == "AVIF" and fmt not in register_plugins():
        return "AVIF images cannot be read: this Pillow was built without AVIF support"
    if fmt in _PLUGIN_FORMATS and fmt not in register_plugins():
        return f"{fmt} images cannot be read: {_PLUGIN_FORMATS[fmt]} is not installed"
    if fmt in ("JPEG XL", "JPEG 2000") and fmt.replace(" ", "").upper() not in _pillow_formats():
        return f"{fmt} images cannot be read (no decoder for them is installed)"
    return None


def _named(data: bytes) -> str:
    """The format the bytes announce and a space ("HEIC "), or "" when they announce none."""
    fmt = sniff_format(data)
    return f"{fmt} " if fmt else ""


def _pillow_formats() -> frozenset[str]:
    """Names of the formats Pillow can open (JPEG2000, ...), spaces removed."""
    return frozenset(f.replace(" ", "").upper() for f in Image.registered_extensions().values())


def _to_gray(img: Image.Image) -> np.ndarray:
    """Any Pillow mode → uint8 grayscale, transparency flattened onto white."""
    if img.mode.startswith("I;16"):
        arr = np.asarray(img, dtype=np.float64)
        return np.clip(arr / 257.0 + 0.5, 0, 255).astype(np.uint8)
    if img.mode == "I":  # 32-bit integer: 16-bit data in practice, 8-bit if it fits
        arr = np.asarray(img, dtype=np.float64)
        hi = float(arr.max()) if arr.size else 0.0
        top = 65535.0 if hi > 255 else 255.0
        return np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        span = hi - lo if hi > lo else 1.0
        return np.nan_to_num((arr - lo) * (255.0 / span)).astype(np.uint8)
    img = _flatten(img)
    if img.mode != "L":
        img = img.convert("L")
    return np.asarray(img, dtype=np.uint8)


def _flatten(img: Image.Image) -> Image.Image:
    """Palette and transparent modes → RGBA composited onto white; others as they are."""
    if img.mode in ("P", "PA", "RGBA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return img


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode → uint8 RGB, transparency flattened onto white as in _to_gray; modes
    without colour (16-bit, 32-bit, float, gray) come back as their gray in three channels."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F", "L", "1"):
        gray = _to_gray(img)
        return np.repeat(gray[:, :, None], 3, axis=2)
    img = _flatten(img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def _fit(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """(w, h) scaled so that the longest side is at most longest."""
    w, h = size
    f = min(1.0, longest / max(w, h))
    return max(1, round(w * f)), max(1, round(h * f))


def _colour_version(img: Image.Image, longest: int) -> np.ndarray:
    """The RGB version of img, longest side at most longest. Modes whose pixels average
    cleanly are shrunk by Pillow before the conversion (a box filter on the small number
    of pixels kept costs ~0.4 ms for a 0.15-megapixel photo); the others (palette,
    transparency, 16-bit) are converted first."""
    size = _fit(img.size, longest)
    if img.mode in ("RGB", "YCbCr", "L", "CMYK"):
        if size != img.size:
            img = img.resize(size, Image.Resampling.BOX)
        return _to_rgb(img)
    rgb = _to_rgb(img)
    if size != img.size:
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return rgb


def decode_image(data: bytes, max_pixels: int, work_size: int,
                 colour_size: int | None = None) -> DecodedImage:
    """Decode image bytes to a grayscale working image whose longest side is <= work_size,
    and, with colour_size, an RGB version whose longest side is <= colour_size.

    Raises DecodeError with a one-line reason for empty, non-image, truncated, corrupt or
    over-large input (NotAnImageError and ImageTooLargeError for the first and the last).
    Pillow's own process-wide settings (its bomb guard, truncated-image loading) are left
    as the host program set them (see agree_pillow_limit); the pixel cap here is checked
    from the header first, and a refusal by Pillow's guard is said as the cap's.
    """
    if work_size < 16:
        raise ValueError("work_size must be at least 16")
    if colour_size is not None and colour_size < 8:
        raise ValueError("colour_size must be at least 8")
    if not data:
        raise NotAnImageError("empty file")
    register_plugins()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            fmt = img.format or (sniff_format(data) or "unknown")
            w, h = img.size
            if w <= 0 or h <= 0:
                raise DecodeError(f"{fmt} image has no pixels ({w}x{h})")
            if w * h > max_pixels:
                raise ImageTooLargeError(too_large(w * h, max_pixels, (w, h)), (w, h))
            frames = int(getattr(img, "n_frames", 1) or 1)
            if frames > 1:
                img.seek(0)
            if fmt == "JPEG":
                # DCT-domain downscale: decodes at 1/2, 1/4 or 1/8 scale when that still
                # leaves the working size, which is most of the decode cost for big photos.
                # Both sides are kept at least the working size: asking only for the
                # working image's own size (a 6000x4000 photo at 1/8, 750x500, instead of
                # 1/4) decodes a fifth faster but leaves a blurrier working image (100
                # bsds500 photos upscaled 9x, queried with their q50 originals: median
                # SSIM 0.88 instead of 0.91). With colour, a colour JPEG is decoded to
                # YCbCr: its Y is, bit for bit, what decoding to L gives, and Cb, Cr make
                # the colour version.
                gray_mode = "YCbCr" if colour_size is not None else "L"
                img.draft(gray_mode if img.mode in ("L", "RGB", "YCbCr") else img.mode,
                          (work_size, work_size))
            img.load()
            # EXIF orientations 5-8 turn the picture by a quarter: width and height swap
            swapped = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
            oriented = ImageOps.exif_transpose(img)
            if oriented is not None:
                img = oriented
            if img.mode == "YCbCr":  # its Y as a plane of its own (no 3-channel copy)
                gray = np.asarray(img.getchannel(0), dtype=np.uint8)
            else:
                gray = _to_gray(img)
            colour = None if colour_size is None else _colour_version(img, colour_size)
    except DecodeError:
        raise
    except UnidentifiedImageError:
        what = sniff_format(data)
        if what is not None:
            raise DecodeError(_unreadable(what) or f"unsupported or corrupt {what} data"
                              ) from None
        kind = looks_like(data)
        if kind == "binary data":
            raise NotAnImageError("not an image (no image format known)") from None
        raise NotAnImageError(f"not an image (looks like {kind})") from None
    except Image.DecompressionBombError as exc:
        # Pillow's own guard (at twice the cap where an entry point made it agree)
        raise ImageTooLargeError(_bomb_message(exc, max_pixels)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DecodeError(f"corrupt or truncated {_named(data)}image: {msg}") from None
    except MemoryError:
        raise ImageTooLargeError("image too large to decode in memory") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise IndexError, KeyError,
        # TypeError, struct.error... on damaged files: all of them mean a corrupt image
        msg = str(exc).splitlines()[0] if str(exc) else ""
        raise DecodeError(f"corrupt {_named(data)}image "
                          f"({type(exc).__name__}{': ' + msg if msg else ''})") from None

    # original size after EXIF orientation (draft() may have reduced the decoded size)
    ow, oh = (h, w) if swapped else (w, h)
    longest = max(gray.shape)
    if longest > work_size:
        f = work_size / longest
        size = (max(1, round(gray.shape[1] * f)), max(1, round(gray.shape[0] * f)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    if min(gray.shape) < 8:
        raise DecodeError(f"image too small to compare ({ow}x{oh} pixels)")
    return DecodedImage(gray=np.ascontiguousarray(gray), width=ow, height=oh, format=fmt,
                        frames=frames,
                        colour=None if colour is None else np.ascontiguousarray(colour))
