"""The FastAPI application: `create_app(settings)` and `serve(settings, host, port)`.

`serve` runs one process, or with several workers uvicorn's supervisor of N processes on one
listening socket: each builds its application with `app_from_environment` (the settings
travel as JSON in ``ECHOIMAGE_SERVE_CONFIG``), loads the index (memory-mapped: the pages are
shared) and refreshes it on its own, so no query waits for another process's Python.
"""

from __future__ import annotations

import copy
import errno
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from uvicorn.supervisors import Multiprocess

from echoimage.api import Catalogue, agree_pillow_limit
from echoimage.config import Settings
from echoimage.errors import EchoImageError, SettingsError
from echoimage.web import admin, findings, pages, routes
from echoimage.web.config import AccessLog, WebSettings
from echoimage.web.docs import add_docs
from echoimage.web.inputs import http_error, invalid
from echoimage.web.metrics import MULTIPROC_ENV
from echoimage.web.observe import Observe
from echoimage.web.service import WebService

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"

#: the environment variable that carries the settings to the worker processes
CONFIG_ENV = "ECHOIMAGE_SERVE_CONFIG"


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

    @app.exception_handler(RequestValidationError)
    async def _unreadable(request: Request, exc: RequestValidationError) -> JSONResponse:
        # a parameter FastAPI could not read (a page past the last, a bad date): one line,
        # as every other error says it
        return JSONResponse({"detail": invalid(exc.errors())}, status_code=422)

    _one_line_422s(app)

    app.include_router(routes.router)
    app.include_router(routes.health_router)
    app.include_router(admin.router)
    app.include_router(pages.router)
    app.include_router(findings.router)
    app.include_router(findings.pages)
    add_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # every request is counted and timed, refusals and errors too
    app.add_middleware(Observe, json_log=web.access_log == AccessLog.JSON)
    return app


def _one_line_422s(app: FastAPI) -> None:
    """Make the OpenAPI schema say what a 422 holds: {"detail": one line}, not FastAPI's
    list of errors (see create_app's handler)."""
    made = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemas = made().get("components", {}).get("schemas", {})
            if "HTTPValidationError" in schemas:
                schemas["HTTPValidationError"] = {
                    "title": "HTTPValidationError", "type": "object",
                    "properties": {"detail": {"title": "Detail", "type": "string"}},
                    "required": ["detail"]}
                schemas.pop("ValidationError", None)
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def app_from_environment() -> FastAPI:
    """The application of a worker process of `serve` (uvicorn's factory): the settings
    `serve` put in ECHOIMAGE_SERVE_CONFIG."""
    config = json.loads(os.environ[CONFIG_ENV])
    settings = Settings.model_validate(config["settings"])
    agree_pillow_limit(settings.max_pixels)  # a worker process is ours too: one pixel cap
    return create_app(settings, WebSettings.model_validate(config["web"]))


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
    """uvicorn's logging setup, with EchoImage's own INFO lines on the same stream,
    uvicorn's late-response tracebacks dropped (LateResponseFilter), and the JSON access
    log (``echoimage.access``) as bare lines on standard output."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["echoimage"] = {"handlers": ["default"], "level": "INFO",
                                      "propagate": False}
    config["formatters"]["bare"] = {"format": "%(message)s"}
    config["handlers"]["echoimage_access"] = {"formatter": "bare",
                                              "class": "logging.StreamHandler",
                                              "stream": "ext://sys.stdout"}
    config["loggers"]["echoimage.access"] = {"handlers": ["echoimage_access"],
                                             "level": "INFO", "propagate": False}
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


def tcp_listener(sock: socket.socket) -> socket.socket:
    """A listening TCP socket as one that says it is TCP (its protocol number set), the
    same socket otherwise.

    asyncio turns Nagle's algorithm off (TCP_NODELAY) only on accepted sockets that say
    so, and they take it from their listener. uvicorn binds the socket its worker
    processes share without it (uvicorn issue #3149): every answer on a kept-alive
    connection then waited for the client's delayed ACK, ~40 ms on Linux, a search's
    latency doubled and one client per process was all a process could serve."""
    if sock.family in (socket.AF_INET, socket.AF_INET6) and \
            sock.type == socket.SOCK_STREAM and sock.proto != socket.IPPROTO_TCP:
        return socket.socket(sock.family, sock.type, socket.IPPROTO_TCP,
                             fileno=sock.detach())
    return sock


def run_processes(app: str, **kwargs: Any) -> None:
    """uvicorn.run with several worker processes (kwargs as its), on uvicorn's own
    listening socket made a TCP one (`tcp_listener`)."""
    config = uvicorn.Config(app, **kwargs)
    sock = tcp_listener(config.bind_socket())
    try:
        Multiprocess(config, sockets=[sock]).run()
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()


def _port_free(host: str, port: int) -> None:
    """Raise a one-line SettingsError when another server listens on host:port (uvicorn
    would say only its errno, and exit); anything else is left to uvicorn to say."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SettingsError(f"cannot listen on {host}:{port}: the address is in use "
                                    "(another server is on it: --port picks another)"
                                    ) from None


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000,
          web: WebSettings | None = None) -> None:
    """Run the server with uvicorn until interrupted: web.processes serving processes
    (`serve_workers`; one per usable core by default), each taking web.threads queries
    at once and letting web.max_waiting wait.

    The store is opened once first, so a missing or damaged catalogue is a one-line
    StoreError here rather than a failed start of every process. The index loads after
    the server listens (/readyz says when). With several processes their metrics meet in a
    private directory (in memory, /dev/shm, where there is one), with the recent queries
    and job records they share; it is removed when the server stops."""
    web = web or WebSettings()
    with Catalogue(settings) as catalogue:
        catalogue.open_store()
    _port_free(host, port)
    if warning := exposure_warning(host, web):
        log.warning("%s", warning)
    agree_pillow_limit(settings.max_pixels)  # this process is ours: one pixel cap
    web = web.model_copy(update={"load_in_background": True})
    run: dict[str, Any] = {"host": host, "port": port, "server_header": False,
                           "access_log": web.access_log == AccessLog.TEXT,
                           "log_level": "info", "log_config": log_config()}
    workers = web.processes
    if workers == 1:
        uvicorn.run(create_app(settings, web), **run)
        return
    shm = Path("/dev/shm")
    runtime = Path(tempfile.mkdtemp(prefix="echoimage-serve-",
                                    dir=shm if shm.is_dir() and os.access(shm, os.W_OK)
                                    else None))
    saved = {k: os.environ.get(k) for k in (MULTIPROC_ENV, CONFIG_ENV)}
    try:
        (runtime / "metrics").mkdir()
        web = web.model_copy(update={"serve_workers": workers, "shared_dir": runtime / "shared"})
        os.environ[MULTIPROC_ENV] = str(runtime / "metrics")
        os.environ[CONFIG_ENV] = json.dumps({
            "settings": settings.model_dump(mode="json"),
            "web": {**web.model_dump(mode="json"),
                    "api_token": _secret(web.api_token),
                    "search_token": _secret(web.search_token)}})
        log.info("starting %d serving processes (%d queries at once each, %d waiting)",
                 workers, web.threads, web.max_waiting)
        run_processes(f"{__name__}:app_from_environment", factory=True, workers=workers,
                      timeout_worker_healthcheck=web.worker_healthcheck_timeout, **run)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(runtime, ignore_errors=True)


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None
