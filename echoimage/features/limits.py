"""The pixel cap's one message, and Pillow's own bomb guard made to agree with it (light:
the command line calls it before it knows whether it will decode anything)."""

from __future__ import annotations

from PIL import Image


def agree_pillow_limit(max_pixels: int) -> None:
    """Make Pillow's decompression-bomb guard agree with EchoImage's pixel cap: it then
    warns above max_pixels (EchoImage refuses those itself, from the header) and refuses
    only above twice as many, so it never refuses an image the cap allows, and what it
    does refuse gets the cap's message (see decode_image). Process-wide: called by the
    entry points (the command line, the web server, the feature workers), never on import.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels


def too_large(pixels: int | None, max_pixels: int, size: tuple[int, int] | None = None
              ) -> str:
    """The one message of an image over the pixel cap."""
    what = f"{size[0]}x{size[1]} = {pixels:,} pixels" if size and pixels else \
        f"{pixels:,} pixels" if pixels else "more pixels than allowed"
    return f"image too large: {what} exceeds the cap of {max_pixels:,} (possible " \
           "decompression bomb)"
