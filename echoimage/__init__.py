"""EchoImage: a precomputed-index search engine for copies and near-copies of images.

    import echoimage

    with echoimage.open("echoimage-data") as catalogue:
        result = catalogue.query("copy.jpg")

The names below are imported on first use, so ``import echoimage`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "open": "echoimage.api",
    "Catalogue": "echoimage.api",
    "Settings": "echoimage.config",
    "QueryResult": "echoimage.search.engine",
    "Match": "echoimage.types",
    "Verdict": "echoimage.types",
    "EchoImageError": "echoimage.errors",
}

if TYPE_CHECKING:
    from echoimage.api import Catalogue, open
    from echoimage.config import Settings
    from echoimage.errors import EchoImageError
    from echoimage.search.engine import QueryResult
    from echoimage.types import Match, Verdict

__all__ = ["Catalogue", "EchoImageError", "Match", "QueryResult", "Settings", "Verdict",
           "__version__", "open"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'echoimage' has no attribute {name!r}")
