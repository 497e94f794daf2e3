"""The API docs (/docs: Swagger UI, /redoc: ReDoc) served from this machine.

FastAPI's own pages load their JavaScript and CSS from a CDN, so they are blank without
internet. Here the pages are FastAPI's (`get_swagger_ui_html`, `get_redoc_html`) with the
asset URLs pointing at the distribution files that the pinned `fastapi-offline` package
ships (Swagger UI and ReDoc bundles), mounted under ASSETS_URL.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

#: where the Swagger UI and ReDoc files are served
ASSETS_URL = "/docs-assets"
#: the asset files the pages load (all in the package's static directory)
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
REDOC_JS = "redoc.standalone.js"
FAVICON_URL = "/static/favicon.svg"


def assets_dir() -> Path:
    """The directory of the Swagger UI and ReDoc distribution files."""
    return Path(str(files("fastapi_offline") / "static"))


def add_docs(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve the app's API docs at docs_url and redoc_url with local assets (the app is
    made with docs_url=None and redoc_url=None)."""
    assert app.openapi_url is not None
    openapi_url = app.openapi_url
    oauth2_url = f"{docs_url}/oauth2-redirect"
    router = APIRouter(include_in_schema=False)

    def _root(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    @router.get(docs_url)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}", title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{oauth2_url}",
            swagger_js_url=f"{root}{ASSETS_URL}/{SWAGGER_JS}",
            swagger_css_url=f"{root}{ASSETS_URL}/{SWAGGER_CSS}",
            swagger_favicon_url=f"{root}{FAVICON_URL}",
            swagger_ui_parameters=app.swagger_ui_parameters)

    @router.get(oauth2_url)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @router.get(redoc_url)
    async def redoc(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}", title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/{REDOC_JS}",
            redoc_favicon_url=f"{root}{FAVICON_URL}", with_google_fonts=False)

    app.include_router(router)
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")
