"""Domain exceptions. The CLI and the web layer map them at the edge."""


class EchoImageError(Exception):
    """Base class of every error EchoImage reports to a user."""


class DecodeError(EchoImageError):
    """The bytes are not an image EchoImage can decode (the message says why)."""


class NotAnImageError(DecodeError):
    """The bytes are empty or are not in any image format."""


class ImageTooLargeError(DecodeError):
    """The image has more pixels or bytes than the caps allow (possible decompression bomb).
    size: its (width, height) where the header told them (over the pixel cap)."""

    def __init__(self, message: str, size: tuple[int, int] | None = None) -> None:
        super().__init__(message)
        self.size = size


class CatalogueError(EchoImageError):
    """A catalogue source cannot be read or parsed."""


class FetchError(EchoImageError):
    """A URL could not be fetched."""


class StoreError(EchoImageError):
    """The store is unreachable or its schema is not current."""


class IndexFileError(EchoImageError):
    """An index file cannot be written (a full or read-only disk, a path in the way)."""


class IndexStaleError(EchoImageError):
    """The shortlist index disagrees with the store and could not be rebuilt."""


class QueryLimitError(EchoImageError, ValueError):
    """A query asks for a number of results outside 1..max_k."""


class QueryInputError(EchoImageError, TypeError):
    """A query given as something that is no image (a float, an array of another type)."""


class SettingsError(EchoImageError, ValueError):
    """A setting has a value it cannot take (`echoimage.open(max_k=0)`, ECHOIMAGE_*)."""


class EmptyCatalogueError(EchoImageError):
    """The store holds no indexed image to search."""


class ScanError(EchoImageError):
    """A scan cannot run (nothing to scan, an empty catalogue, a webhook without a secret)."""
