"""An `echoimage serve` application whose index load and searches wait at gates, for the
tests of readiness and admission on a real uvicorn process.

uvicorn runs it as a factory (``uvicorn gated_app:make --factory --app-dir tests/support``)
with ECHOIMAGE_DATA_DIR and the admission settings in the environment, and
ECHOIMAGE_TEST_GATES naming a directory: the index loads once the file ``load`` exists
there, and each search first waits for the file ``query``. The server is otherwise the
real one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from echoimage.api import Catalogue
from echoimage.config import Settings
from echoimage.web.app import create_app
from echoimage.web.config import WebSettings

GATES_ENV = "ECHOIMAGE_TEST_GATES"


def wait_for(gate: Path, seconds: float = 120.0) -> None:
    """Block until the gate file exists (at most seconds)."""
    deadline = time.monotonic() + seconds
    while not gate.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{gate} never appeared")
        time.sleep(0.02)


def make() -> FastAPI:
    """The application, with Catalogue's index load and query gated."""
    gates = Path(os.environ[GATES_ENV])
    load = Catalogue.search_engine.fget  # type: ignore[attr-defined]
    query = Catalogue.query

    def gated_load(self: Catalogue) -> Any:
        wait_for(gates / "load")
        return load(self)

    def gated_query(self: Catalogue, *args: Any, **kwargs: Any) -> Any:
        wait_for(gates / "query")
        return query(self, *args, **kwargs)

    Catalogue.search_engine = property(gated_load)  # type: ignore[method-assign,assignment]
    Catalogue.query = gated_query  # type: ignore[method-assign]
    return create_app(Settings(), WebSettings(load_in_background=True))
