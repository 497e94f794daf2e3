"""The HTML page: a plain form POST (JavaScript only adds drag and drop), then a redirect to
the results of the query while they are cached (post/redirect/get)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from echoimage.web import render
from echoimage.web.deps import ServiceDep, require_reader
from echoimage.web.inputs import SearchInput, answer, note_search, read_search_input
from echoimage.web.service import WebService

#: the pages need no token unless the server has a search token (then, as the JSON API, a
#: bearer token: a browser's plain page cannot send one, so they are closed)
router = APIRouter(include_in_schema=False, dependencies=[Depends(require_reader)])

#: the page loads nothing from elsewhere and runs no inline script
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob:; script-src 'self'; style-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _html(body: str, status_code: int = 200, headers: dict[str, str] | None = None
          ) -> HTMLResponse:
    return HTMLResponse(body, status_code=status_code,
                        headers={**SECURITY_HEADERS, **(headers or {})})


def html_page(body: str, status_code: int = 200, headers: dict[str, str] | None = None
              ) -> HTMLResponse:
    """A whole page (render.page's) as a response with the pages' security headers."""
    return _html(body, status_code, headers)


def _form(service: WebService, error: HTTPException | None = None,
          inp: SearchInput | None = None) -> HTMLResponse:
    web, settings = service.web, service.settings
    body = render.search_page(
        indexed=service.index_size, max_k=settings.max_k,
        k=inp.k if inp else settings.default_k,
        max_upload_bytes=web.max_upload_bytes, url=(inp.url or "") if inp else "",
        error=(error.status_code, str(error.detail)) if error else None,
        colour_sensitive=settings.colour_sensitive
        if inp is None or inp.colour_sensitive is None else inp.colour_sensitive,
        copies_only=settings.copies_only
        if inp is None or inp.copies_only is None else inp.copies_only)
    if error is None:
        return _html(body)
    return _html(body, error.status_code, error.headers)


@router.get("/", response_class=HTMLResponse)
async def home(service: ServiceDep) -> HTMLResponse:
    """The search form."""
    return _form(service)


@router.post("/search")
async def search(request: Request, service: ServiceDep) -> Response:
    """The form's target: search, then redirect to the results (or show the form's error)."""
    try:
        inp = await read_search_input(request, service)
    except HTTPException as exc:
        return _form(service, exc)
    try:
        entry = await answer(inp, service)
    except HTTPException as exc:
        return _form(service, exc, inp)
    note_search(request, entry)
    return RedirectResponse(f"/results/{entry.token}", status_code=303)


@router.get("/results/{token}", response_class=HTMLResponse)
async def results(token: str, service: ServiceDep) -> HTMLResponse:
    """The results page of a recent query."""
    entry = service.cache.get(token)
    if entry is None:
        body = render.message_page(
            "No such results",
            f"These results have expired, or never were: queries are kept for "
            f"{service.cache.ttl:g} seconds only, and uploaded images are not stored. Search "
            "again to see the matches.")
        return _html(body, 404)
    return _html(render.results_page(entry, service.settings.duplicate_threshold,
                                     service.cache.ttl))


@router.get("/duplicates", response_class=HTMLResponse)
async def duplicates(service: ServiceDep, page: str = "1", crops: bool = False
                     ) -> HTMLResponse:
    """The catalogue's groups of duplicates, with thumbnails (a page number past the last,
    or none, shows the nearest page)."""
    from starlette.concurrency import run_in_threadpool

    result, job = await run_in_threadpool(service.duplicates, crops)
    if result is None:
        assert job is not None
        return _html(render.computing_page(job.done, job.total), 200, {"Refresh": "3"})
    number = int(page) if page.isdecimal() and len(page) < 10 else 1
    return _html(render.duplicates_page(result, number, 24, crops))
