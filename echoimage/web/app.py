"""The FastAPI application: `create_app(settings)` and `serve(settings, host, port)`."""

from __future__ import annotations

import copy
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from echoimage.api import Catalogue, agree_pillow_limit
from echoimage.config import Settings
from echoimage.errors import EchoImageError
from echoimage.web import admin, pages, routes
from echoimage.web.config import WebSettings
from echoimage.web.docs import add_docs
from echoimage.web.inputs import http_error
from echoimage.web.service import WebService

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"


def create_app(settings: Settings, web_settings: WebSettings | None = None) -> FastAPI:
    """The web page and the JSON API over the catalogue of `settings`.

    A serving `Catalogue` of settings (its store and search engine) is opened once, when
    the app starts (its lifespan); its index follows the store's changes (an `echoimage
    index build/update` run elsewhere too) in a background thread, without a restart. The
    catalogue's own settings decide k (default_k, max_k) and every other catalogue limit;
    web_settings only what the server adds (uploads, URL queries, tokens, threads).
    """
    web = web_settings or WebSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = await WebService.start(settings, web)
        app.state.service = service
        try:
            yield
        finally:
            await service.close()

    app = FastAPI(
        title="EchoImage",
        summary="Find copies and near-copies of an image in a catalogue.",
        description="Upload an image or give its URL; the catalogue images it matches come "
                    "back ranked, with the evidence behind each score. Results have the "
                    "schema of `echoimage query --json`.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # add_docs serves /docs and /redoc with local assets (no CDN)
        redoc_url=None,
    )

    @app.exception_handler(EchoImageError)
    async def _domain_error(request: Request, exc: EchoImageError) -> JSONResponse:
        err = http_error(exc)
        return JSONResponse({"detail": err.detail}, status_code=err.status_code)

    app.include_router(routes.router)
    app.include_router(routes.health_router)
    app.include_router(admin.router)
    app.include_router(pages.router)
    add_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


class LateResponseFilter(logging.Filter):
    """Drop uvicorn's traceback for a response the application sends after uvicorn has
    already refused the request (broken framing: uvicorn answered 400, logged one line and
    closed the connection; the application, which had the headers, answers a moment later
    into the closed connection, and h11 raises). The request was refused and logged once."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        late = (type(exc).__name__ == "LocalProtocolError"
                and type(exc).__module__.startswith("h11")
                and ("MUST_CLOSE" in str(exc) or "state=ERROR" in str(exc)))
        return not late


def log_config() -> dict[str, Any]:
    """uvicorn's logging setup, with EchoImage's own INFO lines on the same stream and
    uvicorn's late-response tracebacks dropped (LateResponseFilter)."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["echoimage"] = {"handlers": ["default"], "level": "INFO",
                                      "propagate": False}
    config.setdefault("filters", {})["late_response"] = {
        "()": f"{__name__}.LateResponseFilter"}
    config["handlers"]["default"].setdefault("filters", []).append("late_response")
    return config


def exposure_warning(host: str, web: WebSettings) -> str | None:
    """A warning when the server would listen beyond this machine with no search token
    (anyone who reaches the port can search the catalogue and see its images)."""
    import ipaddress

    if web.search_token is not None:
        return None
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return None
    return (f"listening on {host} without ECHOIMAGE_SEARCH_TOKEN: anyone who reaches this "
            "port can search the catalogue and see its thumbnails; set a token, or listen "
            "on 127.0.0.1 behind a reverse proxy that controls access (see the README)")


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000, *,
          access_log: bool = True) -> None:
    """Run the server with uvicorn until interrupted (one process; queries use threads).

    The store is opened once first, so a missing or damaged catalogue is a one-line
    StoreError here rather than a failed application start-up."""
    with Catalogue(settings) as catalogue:
        catalogue.open_store()
    if warning := exposure_warning(host, WebSettings()):
        log.warning("%s", warning)
    agree_pillow_limit(settings.max_pixels)  # this process is ours: one pixel cap
    app = create_app(settings)
    uvicorn.run(app, host=host, port=port, access_log=access_log, server_header=False,
                log_level="info", log_config=log_config())
