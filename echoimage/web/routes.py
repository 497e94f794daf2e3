"""The JSON API. Routes raise only HTTPException; domain errors are mapped in `inputs`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from echoimage.errors import EchoImageError
from echoimage.types import Picture, Status
from echoimage.web.cache import CachedQuery
from echoimage.web.deps import CachedQueryDep, ImageIdDep, ServiceDep, require_reader
from echoimage.web.inputs import http_error, refusal, run_search
from echoimage.web.metrics import CONTENT_TYPE
from echoimage.web.schemas import (
    ErrorResponse,
    HealthResponse,
    ImageInfo,
    ReadyResponse,
    SearchResponse,
    StatsResponse,
)
from echoimage.web.service import NotReady, WebService
from echoimage.web.visual import encode_png, restore_aspect

#: the search and read API: open unless the server has a search token
router = APIRouter(dependencies=[Depends(require_reader)])
#: liveness: always open
health_router = APIRouter()

PNG = {200: {"content": {"image/png": {}}, "description": "a PNG image"}}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse} for code in codes}


_SEARCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object",
                "properties": {
                    "file": {"type": "string", "format": "binary",
                             "description": "the query image (or give url)"},
                    "url": {"type": "string", "description": "http(s) URL of the query image"},
                    "k": {"type": "integer", "minimum": 1, "description": "results wanted"},
                    "colour_sensitive": {"type": "boolean",
                                         "description": "call recoloured copies so"},
                    "copies_only": {"type": "boolean",
                                    "description": "the copies alone, not the nearest "
                                                   "images (faster)"},
                },
            }},
            "application/json": {"schema": {
                "type": "object", "required": ["url"],
                "properties": {"url": {"type": "string"},
                               "k": {"type": "integer", "minimum": 1},
                               "colour_sensitive": {"type": "boolean"},
                               "copies_only": {"type": "boolean"}},
            }},
        },
    }
}


def search_response(entry: CachedQuery, service: WebService) -> dict[str, Any]:
    """The JSON answer of a search: `query --json`'s object, plus token, sizes and links.

    The results are `Match.to_dict()` as they are (returned without re-validation through
    `SearchResponse`, which documents them), so they stay exactly what the CLI prints.
    """
    t = entry.token
    img = entry.image
    return {
        "query": entry.label,
        "found": entry.result.found,
        "results": [m.to_dict() for m in entry.result.matches],
        "copies_only": entry.result.copies_only,
        "query_token": t,
        "expires_in_s": round(service.cache.expires_in(entry), 1),
        "width": img.width, "height": img.height, "format": img.format,
        "timings_ms": entry.result.timings,
        "links": {"query_image": f"/api/queries/{t}/image.png",
                  "thumbnail": "/api/images/{id}/thumbnail.png",
                  "preview": "/api/images/{id}/preview",
                  "match_image": f"/api/matches/{t}/{{id}}.png",
                  "results": f"/results/{t}"},
    }


@router.post("/api/search", response_model=SearchResponse, openapi_extra=_SEARCH_BODY,
             responses=_errors(400, 413, 415, 422, 502, 503, 504), tags=["search"])
async def search(request: Request, service: ServiceDep) -> JSONResponse:
    """Search the catalogue for copies of an image.

    Send ``multipart/form-data`` with a ``file`` (the image) or a ``url`` field, and
    optionally ``k``, ``colour_sensitive`` and ``copies_only``; or a JSON body ``{"url":
    ..., "k": ..., "colour_sensitive": ..., "copies_only": ...}``. Colour-sensitive, a
    copy whose ``colour_distance`` passes the server's colour threshold has the verdict
    ``recoloured`` instead of ``duplicate``. Copies only, the ``results`` are the copies
    alone (none when none is found), not the nearest images too, and the search is faster.
    The ``results`` have the schema of ``echoimage query --json``. The uploaded image is
    not added to the catalogue; it is kept (decoded, in memory) only for ``expires_in_s``
    seconds, for the match images.
    """
    entry = await run_search(request, service)
    return JSONResponse(search_response(entry, service),
                        headers={"Connection": "close"} if service.sheds() else None)


@router.get("/api/queries/{token}", response_model=SearchResponse, responses=_errors(404),
            tags=["search"])
async def recent_query(entry: CachedQueryDep, service: ServiceDep) -> JSONResponse:
    """The results of a recent search, while it is cached."""
    return JSONResponse(search_response(entry, service))


@router.get("/api/queries/{token}/image.png", response_class=Response,
            responses={**PNG, **_errors(404)}, tags=["search"])
async def query_image(entry: CachedQueryDep, service: ServiceDep) -> Response:
    """The query image as the engine saw it (its working image, in colour)."""
    png = await run_in_threadpool(service.query_png, entry)
    return Response(png, media_type="image/png", headers=_private(service))


@router.get("/api/matches/{token}/{image_id}.png", response_class=Response,
            responses={**PNG, **_errors(404)}, tags=["search"])
async def match_image(image_id: ImageIdDep, entry: CachedQueryDep, service: ServiceDep) -> Response:
    """The query and a matched catalogue image side by side: lines join the matched
    keypoints (RANSAC inliers); the matched region is outlined on the catalogue image."""
    match = entry.match(image_id)
    if match is None:
        raise HTTPException(404, f"image {image_id} is not among this query's results")
    try:
        png = await service.run(service.match_png, entry, match)
    except EchoImageError as exc:
        raise http_error(exc) from None
    if png is None:
        raise HTTPException(404, f"image {image_id} is no longer indexed")
    return Response(png, media_type="image/png", headers=_private(service))


def _private(service: WebService) -> dict[str, str]:
    return {"Cache-Control": f"private, max-age={int(service.cache.ttl)}"}


@router.get("/api/images/{image_id}", response_model=ImageInfo, responses=_errors(404),
            tags=["catalogue"])
def image(image_id: ImageIdDep, service: ServiceDep) -> dict[str, Any]:
    """Metadata, provenance and indexing status of a catalogue image."""
    info = service.catalogue.image(image_id)
    if info is None:
        raise HTTPException(404, f"no catalogue image has id {image_id}")
    info["thumbnail"] = (f"/api/images/{image_id}/thumbnail.png"
                         if info["status"] == Status.INDEXED else None)
    return info


@router.get("/api/images/{image_id}/thumbnail.png", response_class=Response,
            responses={**PNG, **_errors(404)}, tags=["catalogue"])
def thumbnail(image_id: ImageIdDep, service: ServiceDep) -> Response:
    """The stored grayscale thumbnail of an indexed image, at the image's aspect ratio
    (longest side 256). Served from the store, so it shows even when the source is down."""
    return _thumbnail(image_id, service.catalogue.picture(image_id))


def _thumbnail(image_id: int, picture: Picture | None) -> Response:
    if picture is None:
        raise HTTPException(404, f"no thumbnail: image {image_id} is not indexed")
    thumb = picture.thumbnail
    if picture.width and picture.height:
        thumb = restore_aspect(thumb, picture.width, picture.height, max(thumb.shape))
    return Response(encode_png(thumb), media_type="image/png",
                    headers={"Cache-Control": "public, max-age=300"})


@router.get("/api/images/{image_id}/preview", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}, "image/png": {}},
                             "description": "a JPEG (colour) or PNG (gray) image"},
                       **_errors(404)}, tags=["catalogue"])
def preview(image_id: ImageIdDep, service: ServiceDep) -> Response:
    """The stored colour preview of an indexed image (JPEG, longest side colour_size);
    the grayscale thumbnail for an image indexed before colour was kept."""
    picture = service.catalogue.picture(image_id)
    if picture is None or picture.preview is None:
        return _thumbnail(image_id, picture)
    return Response(picture.preview, media_type="image/jpeg",
                    headers={"Cache-Control": "public, max-age=300"})


@router.get("/api/stats", response_model=StatsResponse, responses=_errors(503),
            tags=["server"])
async def stats(service: ServiceDep) -> dict[str, Any]:
    """Catalogue images by status, the loaded index (re-read if a newer one was written),
    and this server's query counters."""
    if not service.ready:
        raise refusal(service, NotReady(service.load_error or "the index is loading"))
    try:
        return await run_in_threadpool(service.stats)
    except EchoImageError as exc:
        raise http_error(exc) from None


@health_router.get("/health", response_model=HealthResponse, tags=["server"])
async def health(service: ServiceDep) -> dict[str, Any]:
    """Liveness and the size of the index (null while it is loading)."""
    return {"status": "ok", "index_entries": service.index_size}


@health_router.get("/healthz", response_model=HealthResponse, tags=["server"])
async def healthz(service: ServiceDep) -> dict[str, Any]:
    """Liveness, for a load balancer or Kubernetes: the process answers (200 as soon as
    it listens, while the index loads too)."""
    return {"status": "ok", "index_entries": service.index_size}


@health_router.get("/readyz", response_model=ReadyResponse,
                   responses={503: {"model": ReadyResponse}}, tags=["server"])
async def readyz(service: ServiceDep) -> JSONResponse:
    """Readiness: 200 once this process has loaded the index and takes searches; 503
    (`loading`, or `failed` with the reason) before."""
    if service.ready:
        return JSONResponse({"status": "ready", "index_entries": service.index_size})
    status = "failed" if service.load_error else "loading"
    return JSONResponse({"status": status, "detail": service.load_error}, status_code=503,
                        headers={"Retry-After": str(service.web.retry_after)})


@health_router.get("/metrics", response_class=Response, tags=["server"],
                   responses={200: {"content": {CONTENT_TYPE: {}},
                                    "description": "Prometheus text format"}})
async def metrics(service: ServiceDep) -> Response:
    """Prometheus metrics of every serving process: requests and latency by route, search
    stages, found / no-copy counts, refusals, queue depth, the index's change number and
    lag behind the store, query-cache lookups."""
    if not service.web.metrics:
        raise HTTPException(404, "Not Found")
    await service.update_index_metrics()
    body = await run_in_threadpool(service.metrics.render)
    return Response(body, media_type=CONTENT_TYPE)
