"""What a file is, from its first bytes: an image format (read or not), or what else it looks
like. Pure functions over bytes; nothing here decodes.

``sniff_format`` names image formats only (it is how the fetcher and the web page accept a
body as an image); ``looks_like`` also names what is not an image (SVG, PDF, HTML, an
archive, a video...) so that a refusal can say what it was given.
"""

from __future__ import annotations

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
)

#: sizes of the header that follows a BMP's file header (BITMAPCOREHEADER ... V5)
_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})

#: ISOBMFF brands (the ``ftyp`` box) of still images
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"})
_HEIF_BRANDS = frozenset({b"mif1", b"msf1", b"mif2"})

#: non-image files, by their first bytes
_OTHER_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "PDF"),
    (b"%!PS", "PostScript"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"PK\x05\x06", "ZIP archive"),
    (b"\x1f\x8b", "gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archive"),
    (b"Rar!\x1a\x07", "RAR archive"),
    (b"\xfd7zXZ\x00", "xz archive"),
    (b"\x7fELF", "executable"),
    (b"SQLite format 3\x00", "SQLite database"),
    (b"ID3", "MP3 audio"),
    (b"OggS", "Ogg media"),
    (b"fLaC", "FLAC audio"),
    (b"\x1aE\xdf\xa3", "Matroska/WebM video"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "Microsoft Office document"),
    (b"{\\rtf", "RTF document"),
)


def _isobmff_brands(data: bytes) -> list[bytes] | None:
    """Major and compatible brands of an ISO base media file (MP4, HEIF, AVIF...), or None."""
    if len(data) < 12 or data[4:8] != b"ftyp":
        return None
    size = int.from_bytes(data[0:4], "big")
    end = min(len(data), size if size >= 16 else 16)
    brands = [data[8:12]]
    brands += [data[i:i + 4] for i in range(16, end - 3, 4)]
    return brands


def sniff_format(data: bytes) -> str | None:
    """The image format named by the first bytes, or None if they are not a known image.

    HEIF files are named by their brands: "AVIF", "HEIC" (HEVC-coded, every iPhone's
    photos) or "HEIF" (the container with no more specific brand in the bytes given).
    """
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM" and (len(data) < 18 or int.from_bytes(data[14:18], "little")
                              in _BMP_HEADER_SIZES):
        return "BMP"
    brands = _isobmff_brands(data)
    if brands is not None:
        if brands[0] in _AVIF_BRANDS:
            return "AVIF"
        if brands[0] in _HEIC_BRANDS:
            return "HEIC"
        if brands[0] in _HEIF_BRANDS:
            if any(b in _AVIF_BRANDS for b in brands):
                return "AVIF"
            if any(b in _HEIC_BRANDS for b in brands):
                return "HEIC"
            return "HEIF"
        return None
    if len(data) >= 3 and data[0:1] == b"P" and data[1:2] in b"123456" \
            and data[2:3] in b" \t\r\n":
        return "PNM"
    return None


def _text_kind(data: bytes) -> str | None:
    """What markup or text the bytes look like (SVG, HTML, XML, JSON), or None."""
    head = data[:2048]
    for bom in (b"\xef\xbb\xbf",):
        if head.startswith(bom):
            head = head[len(bom):]
    head = head.lstrip().lower()
    if head.startswith(b"<"):
        if b"<svg" in head:
            return "SVG"
        if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) \
                or b"<html" in head:
            return "HTML"
        return "XML"
    return None


def looks_like(data: bytes) -> str:
    """A short name for what the bytes are: an image format, a known file type, "text",
    "binary data" or "an empty file"."""
    if not data:
        return "an empty file"
    fmt = sniff_format(data)
    if fmt is not None:
        return fmt
    for magic, name in _OTHER_SIGNATURES:
        if data.startswith(magic):
            return name
    brands = _isobmff_brands(data)
    if brands is not None:
        return "MP4/QuickTime video"
    if data[:4] == b"RIFF":
        return {b"WAVE": "WAV audio", b"AVI ": "AVI video"}.get(data[8:12], "RIFF data")
    if (markup := _text_kind(data)) is not None:
        return markup
    sample = data[:4096]
    if b"\x00" in sample:
        return "binary data"
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(sample) - 3:  # not just a character cut by the sample's end
            return "binary data"
    return "text"
