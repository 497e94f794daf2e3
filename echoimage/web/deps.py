"""FastAPI dependencies as `Annotated` aliases."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request

from echoimage.web.cache import CachedQuery
from echoimage.web.service import WebService


def get_service(request: Request) -> WebService:
    """The process's WebService, built once by the app's lifespan."""
    return request.app.state.service


ServiceDep = Annotated[WebService, Depends(get_service)]


def get_cached_query(token: str, service: ServiceDep) -> CachedQuery:
    """The recent query named by token; 404 once it has expired."""
    entry = service.cache.get(token)
    if entry is None:
        raise HTTPException(404, f"unknown or expired query token (queries are kept for "
                                 f"{service.cache.ttl:g} s)")
    return entry


CachedQueryDep = Annotated[CachedQuery, Depends(get_cached_query)]


#: the largest id a catalogue image can have (a SQLite INTEGER PRIMARY KEY is a signed int64)
MAX_IMAGE_ID = 2**63 - 1


def get_image_id(image_id: Annotated[int, Path(description="a catalogue image's id")]) -> int:
    """The image id of the path; 404, like any unknown id, when no image can have it (an id
    beyond int64 would otherwise overflow the store's query)."""
    if not 1 <= image_id <= MAX_IMAGE_ID:
        raise HTTPException(404, f"no catalogue image has id {image_id}")
    return image_id


ImageIdDep = Annotated[int, Depends(get_image_id)]


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _check_token(request: Request, expected: str) -> None:
    """401 without a bearer token, 403 with a wrong one (compared in constant time)."""
    given = _bearer(request)
    if given is None:
        raise HTTPException(401, "this endpoint needs `Authorization: Bearer <token>`",
                            headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(403, "wrong token")


def require_admin(request: Request, service: ServiceDep) -> None:
    """The management API: 404 when the server has no API token (it does not exist), else
    the bearer token must be it."""
    token = service.web.api_token
    if token is None:
        raise HTTPException(404, "Not Found")
    _check_token(request, token.get_secret_value())


def require_reader(request: Request, service: ServiceDep) -> None:
    """Searching and reading: open, unless the server has a search token."""
    token = service.web.search_token
    if token is not None:
        _check_token(request, token.get_secret_value())


AdminDep = Annotated[None, Depends(require_admin)]
