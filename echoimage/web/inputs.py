"""Reading a search request at the edge: the upload (size cap enforced while the body streams
in, kept in memory), or the URL (fetched through the SSRF guard), and k; then the search.

Everything here raises `HTTPException` with a one-line ``detail``: 400 bad request or refused
URL, 413 too large, 415 not an image, 422 undecodable image or bad k, 502/504 upstream
failure, 503 busy or no catalogue.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from echoimage.api import sniff_format
from echoimage.errors import (
    DecodeError,
    EchoImageError,
    EmptyCatalogueError,
    FetchError,
    IndexStaleError,
    QueryLimitError,
    StoreError,
)
from echoimage.types import FetchStatus
from echoimage.web.cache import CachedQuery
from echoimage.web.schemas import SearchRequest
from echoimage.web.service import NotReady, ServerBusy, WebService

logger = logging.getLogger(__name__)

#: room for the multipart boundaries, part headers and the small fields around the file
FORM_OVERHEAD = 64 * 1024
JSON_LIMIT = 64 * 1024
CHUNK = 64 * 1024
SUPPORTED = "JPEG, PNG, GIF, BMP, TIFF, WebP, HEIC/HEIF or AVIF"
_DIGITS = re.compile(r"[0-9]+")

_FETCH_STATUS_CODES = {
    FetchStatus.BAD_URL: 400,
    FetchStatus.REFUSED: 400,  # the SSRF guard refused the address the host resolved to
    FetchStatus.TOO_LARGE: 413,
    FetchStatus.NOT_AN_IMAGE: 415,
    FetchStatus.TIMEOUT: 504,
}


@dataclass(frozen=True)
class SearchInput:
    """A parsed search request: upload bytes or a URL, k, and a label for the results."""

    data: bytes | None
    url: str | None
    k: int
    label: str
    colour_sensitive: bool | None = None  # None: the server's setting
    copies_only: bool | None = None  # the copies alone (None: the server's setting)


def http_error(exc: EchoImageError) -> HTTPException:
    """The HTTP form of a domain error."""
    if isinstance(exc, DecodeError):
        return HTTPException(422, f"cannot decode the image: {exc}")
    if isinstance(exc, QueryLimitError):
        return HTTPException(422, str(exc))
    if isinstance(exc, FetchError):
        return HTTPException(502, str(exc))
    if isinstance(exc, EmptyCatalogueError | IndexStaleError | StoreError):
        return HTTPException(503, str(exc))
    return HTTPException(500, str(exc))


def invalid(errors: Sequence[Any]) -> str:
    """pydantic's validation errors as the one line of a 422: where the first is, and
    what (``per_page: Input should be less than or equal to 200``)."""
    err = errors[0]
    where = ".".join(str(p) for p in err["loc"] if p not in ("query", "path")) or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {err['msg']}{more}"


def _too_large(cap: int) -> HTTPException:
    return HTTPException(413, f"upload too large: the limit is {cap:,} bytes")


async def _limited(request: Request, cap: int, limit: int) -> AsyncGenerator[bytes, None]:
    """The request body, stopped with 413 as soon as more than limit bytes have arrived.

    A body that ends early (the client hung up, or its chunked framing was broken and the
    server closed the connection) is refused with 400 and logged in one line.
    """
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                raise _too_large(cap)
            yield chunk
    except ClientDisconnect:
        client = request.client.host if request.client else "unknown client"
        logger.info("%s %s from %s refused: request body incomplete, the connection closed "
                    "with %d bytes of it read", request.method, request.url.path, client, seen)
        raise HTTPException(400, "request body incomplete: the connection closed before "
                                 "its end") from None


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        raise HTTPException(400, "malformed Content-Length header") from None


def parse_flag(value: object, name: str) -> bool | None:
    """A form checkbox or field called name: absent or "" is None (the default); "on",
    "true", "1" and "yes" are True, "off", "false", "0" and "no" False; anything else is
    refused (422). (A field sent twice is its last value, as the form reads it: the
    search page sends a hidden "off" before each box, which a checked box's "on"
    follows.)"""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = value.strip().lower() if isinstance(value, str) else None
    if text in ("on", "true", "1", "yes"):
        return True
    if text in ("off", "false", "0", "no"):
        return False
    raise HTTPException(422, f"{name} must be true or false")


def parse_k(value: object, default: int, most: int) -> int:
    """k from JSON (an integer) or a form field (ASCII digits); None or "" means the default.

    422 for anything else: a boolean, a fraction, a sign, an underscore, non-ASCII digits,
    a file, or a number outside 1..most.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    k: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        k = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        digits = value.strip().lstrip("0") or "0"
        k = int(digits) if len(digits) <= 18 else None  # longer ones are out of range anyway
    if k is None:
        said = repr(value) if isinstance(value, str) else type(value).__name__
        raise HTTPException(422, f"k must be a whole number from 1 to {most}, not {said[:40]}")
    if not 1 <= k <= most:
        raise HTTPException(422, f"k must be a whole number from 1 to {most}, not {k}")
    return k


async def read_upload(upload: UploadFile, cap: int) -> bytes:
    """The uploaded file's bytes, read in chunks; 413 as soon as it passes cap."""
    buf = bytearray()
    while chunk := await upload.read(CHUNK):
        buf += chunk
        if len(buf) > cap:
            raise _too_large(cap)
    return bytes(buf)


async def _read_form(request: Request, media: str, cap: int) -> FormData:
    limit = cap + FORM_OVERHEAD
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        raise _too_large(cap)
    stream = _limited(request, cap, limit)
    try:
        if media == "multipart/form-data":
            parser = MultiPartParser(request.headers, stream, max_files=1, max_fields=8,
                                     max_part_size=16 * 1024)
            parser.spool_max_size = limit  # keep the upload in memory, never on disk
            return await parser.parse()
        return await FormParser(request.headers, stream, max_fields=8,
                                max_part_size=16 * 1024).parse()
    except MultiPartException as exc:
        raise HTTPException(400, f"bad form data: {exc.message}") from None


async def read_search_input(request: Request, service: WebService) -> SearchInput:
    """Parse POST /api/search or the page's form: multipart/urlencoded fields or JSON."""
    web, most = service.web, service.settings.max_k
    default = service.settings.default_k
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media == "application/json":
        declared = _declared_length(request)
        if declared is not None and declared > JSON_LIMIT:
            raise HTTPException(413, f"JSON body too large: the limit is {JSON_LIMIT:,} bytes")
        body = b"".join([c async for c in _limited(request, JSON_LIMIT, JSON_LIMIT)])
        try:
            req = SearchRequest.model_validate_json(body)
        except ValidationError as exc:
            raise HTTPException(422, f"bad JSON body: {invalid(exc.errors())}") from None
        url = req.url.strip()
        if not url:
            raise HTTPException(400, "give a URL")
        return SearchInput(None, url, parse_k(req.k, default, most), url,
                           req.colour_sensitive, req.copies_only)
    if media not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise HTTPException(415, "send multipart/form-data with a 'file' or 'url' field, "
                                 "or a JSON body {\"url\": ..., \"k\": ..., "
                                 "\"colour_sensitive\": ...}")
    form = await _read_form(request, media, web.max_upload_bytes)
    k = parse_k(form.get("k"), default, most)
    sensitive = parse_flag(form.get("colour_sensitive"), "colour_sensitive")
    copies_only = parse_flag(form.get("copies_only"), "copies_only")
    raw_url = form.get("url")
    url = raw_url.strip() if isinstance(raw_url, str) else ""
    upload = form.get("file")
    data: bytes | None = None
    label = ""
    if isinstance(upload, UploadFile):
        data = await read_upload(upload, web.max_upload_bytes)
        label = upload.filename or "upload"
        await upload.close()
        if not data and not upload.filename:  # a form submitted with no file chosen
            data = None
    elif isinstance(upload, str) and upload:
        raise HTTPException(400, "the 'file' field must be a file upload")
    if data is not None and url:
        raise HTTPException(400, "give either a file or a URL, not both")
    if data is None and not url:
        raise HTTPException(400, "give an image file (field 'file') or its URL (field 'url')")
    if data is not None:
        return SearchInput(data, None, k, label, sensitive, copies_only)
    return SearchInput(None, url, k, url, sensitive, copies_only)


def check_image_bytes(data: bytes) -> None:
    """415 unless the first bytes are a known image signature (422 for an empty file)."""
    if not data:
        raise HTTPException(422, "cannot decode the image: the file is empty")
    if sniff_format(data[:32]) is None:
        head = data[:64].lstrip()
        what = "HTML/XML" if head[:1] == b"<" else f"bytes {data[:8].hex(' ')}"
        raise HTTPException(415, f"not an image: the file starts with {what}; "
                                 f"send {SUPPORTED}")


async def fetch_query(service: WebService, url: str) -> bytes:
    """The bytes behind a query URL, or the HTTP error that explains why not."""
    res = await service.fetch(url)
    if res.status == FetchStatus.OK and res.data is not None:
        return res.data
    reason = res.reason or res.status
    code = _FETCH_STATUS_CODES.get(res.status, 502)
    raise HTTPException(code, f"cannot fetch {url}: {reason}")


def refusal(service: WebService, exc: ServerBusy | NotReady) -> HTTPException:
    """503 with Retry-After, closing the connection (the client's next try may reach a
    process of the server with room, or a ready one)."""
    headers = {"Retry-After": str(service.web.retry_after), "Connection": "close"}
    if isinstance(exc, ServerBusy):
        return HTTPException(503, "server busy: too many queries waiting; retry shortly",
                             headers=headers)
    return HTTPException(503, f"not ready: {exc}; retry shortly", headers=headers)


def admit(service: WebService) -> None:
    """Refuse a search at once (503) when the server cannot take it."""
    try:
        service.admit()
    except (ServerBusy, NotReady) as exc:
        raise refusal(service, exc) from None


async def answer(inp: SearchInput, service: WebService) -> CachedQuery:
    """Fetch or take the bytes, check them, queue and search."""
    admit(service)
    data = inp.data if inp.data is not None else await fetch_query(service, inp.url or "")
    check_image_bytes(data)
    try:
        return await service.search(data, inp.label, inp.k, inp.colour_sensitive,
                                    inp.copies_only)
    except (ServerBusy, NotReady) as exc:
        raise refusal(service, exc) from None
    except EchoImageError as exc:
        raise http_error(exc) from None


async def drain(request: Request, service: WebService) -> None:
    """Read and drop the rest of a refused request's body (at most what a search may
    send), so that the client, still sending it, gets the answer rather than a reset
    connection."""
    limit = service.web.max_upload_bytes + FORM_OVERHEAD
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                break
    except ClientDisconnect:
        pass


async def run_search(request: Request, service: WebService) -> CachedQuery:
    """The whole search: refused at once when the server cannot take it (the body read
    and dropped); else read the request, then answer it (the outcome is noted for the
    access log)."""
    try:
        admit(service)
    except HTTPException:
        await drain(request, service)
        raise
    entry = await answer(await read_search_input(request, service), service)
    note_search(request, entry)
    return entry


def note_search(request: Request, entry: CachedQuery) -> None:
    """What the access log says of a search: found or not, results, copies only or not,
    stage times."""
    res = entry.result
    request.state.search = {"found": res.found, "results": len(res.matches), "k": entry.k,
                            "copies_only": res.copies_only, "stages_ms": res.timings}
