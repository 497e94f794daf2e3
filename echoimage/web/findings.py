"""Findings over HTTP: what scans found (`GET /api/findings`, the `/findings` page, each
finding's match picture) and scans run as background jobs (`POST /api/scans`, behind the
API token like the other management endpoints).

A scan over HTTP takes http(s) targets only (a local path would let a caller read the
server's files) and fetches through the server's SSRF guard (`ECHOIMAGE_URL_ALLOWLIST`); a
watch keeps the targets its owner gave it on the command line.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from echoimage.api import FindingInfo, is_url
from echoimage.errors import ScanError
from echoimage.web import render
from echoimage.web.deps import AdminDep, ServiceDep, require_reader
from echoimage.web.jobs import Job
from echoimage.web.pages import html_page
from echoimage.web.service import WebService

router = APIRouter(tags=["findings"])
pages = APIRouter(include_in_schema=False, dependencies=[Depends(require_reader)])

PNG = {200: {"content": {"image/png": {}}, "description": "a PNG image"}}


class ScanRequest(BaseModel):
    """A scan to run: targets (http(s) page URLs, lists or images.json URLs), or watches
    (their names; an empty list: every watch)."""

    model_config = ConfigDict(extra="forbid")

    targets: list[str] = Field(default_factory=list, max_length=1000,
                               description="http(s) URLs of pages, image lists or images.json")
    watches: list[str] | None = Field(None, description="scan these watches instead ([]: all)")
    follow_pages: int = Field(0, ge=0, le=10_000,
                              description="also scan up to N same-site pages linked from "
                                          "each page target")
    all: bool = Field(False, description="report every finding seen, not only the new ones")
    notify: str | None = Field(None, description="a webhook URL for each new finding")


def finding_json(f: FindingInfo) -> dict[str, Any]:
    """A finding as the API gives it: `scan --json`'s object and its links."""
    return {**f.to_dict(), "links": {
        "match_image": f"/api/findings/{f.id}/match.png",
        "catalogue_image": f"/api/images/{f.catalogue_id}",
        "catalogue_preview": f"/api/images/{f.catalogue_id}/preview"}}


Since = Annotated[datetime | None, Query(description="first seen at or after this time "
                                                     "(ISO 8601)")]


@router.get("/api/findings", dependencies=[Depends(require_reader)])
async def findings(service: ServiceDep,
                   page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
                   per_page: Annotated[int, Query(ge=1, le=200)] = 50,
                   watch: Annotated[str | None, Query(max_length=128)] = None,
                   catalogue_image: Annotated[int | None, Query(ge=1)] = None,
                   since: Since = None, gone: bool = False) -> dict[str, Any]:
    """Findings of scans, newest first (first seen), paged: of a watch, of a catalogue
    image, first seen since a time; with gone=true also those found gone."""
    total, found = await run_in_threadpool(
        service.catalogue.findings, watch, catalogue_image, since, gone, page, per_page)
    return {"total": total, "page": page, "per_page": per_page,
            "pages": max(1, -(-total // per_page)), "results": [finding_json(f) for f in found]}


@router.get("/api/findings/{finding_id}/match.png", response_class=Response,
            responses={**PNG, 404: {"description": "no such finding or picture"}},
            dependencies=[Depends(require_reader)])
async def finding_match(finding_id: int, service: ServiceDep) -> Response:
    """The found image beside the catalogue image it copies: lines join the matched
    keypoints, the matched region is outlined on the catalogue image."""
    if not 1 <= finding_id <= 2**63 - 1:
        raise HTTPException(404, f"no finding {finding_id}")
    png = await service.run(service.finding_png, finding_id)
    if png is None:
        raise HTTPException(404, f"no picture of finding {finding_id}")
    return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=300"})


@router.post("/api/scans", status_code=202)
async def start_scan(req: ScanRequest, service: ServiceDep, _: AdminDep) -> JSONResponse:
    """Scan targets (or watches) as a background job, like `echoimage scan`; poll
    `GET /api/jobs/{id}`: its result is the scan's summary and the findings it reported."""
    if bool(req.targets) == (req.watches is not None):
        raise HTTPException(422, "give targets, or watches (not both)")
    bad = [t for t in req.targets if not is_url(t.strip())]
    if bad:
        raise HTTPException(422, f"scan targets over HTTP are http(s) URLs, not "
                                 f"{bad[0][:200]!r}")
    for url in [*req.targets, *([req.notify] if req.notify else [])]:
        if problem := await service.policy.check(url.strip()):
            raise HTTPException(400, f"refused {url[:200]}: {problem}")
    params = {"targets": req.targets, "watches": req.watches,
              "follow_pages": req.follow_pages, "all": req.all, "notify": req.notify}
    job = service.jobs.submit("scan", params, _scan(service, req))
    return JSONResponse(job.as_dict(), status_code=202,
                        headers={"Location": f"/api/jobs/{job.id}"})


def _scan(service: WebService, req: ScanRequest) -> Any:
    def run(job: Job) -> None:
        def progress(done: int, total: int) -> None:
            job.progress(done, total)

        cat = service.catalogue
        if req.watches is not None:
            reports = cat.scan_watches(*req.watches, report_all=req.all,
                                       url_policy=service.policy, on_progress=progress)
        else:
            reports = [cat.scan(*[t.strip() for t in req.targets],
                                follow_pages=req.follow_pages, report_all=req.all,
                                notify=req.notify, url_policy=service.policy,
                                on_progress=progress)]
        for r in reports:
            for key, n in r.counts().items():
                job.counts[key] = job.counts.get(key, 0) + n
            job.errors.extend(f"{f.status}: {f.kind} {f.url}: {f.reason}" for f in r.failures)
        job.result = {"scans": [r.as_dict() for r in reports],
                      "findings": [finding_json(f) for r in reports for f in r.findings][:500]}
        failed = [r for r in reports if not r.ok]
        if failed:
            raise ScanError(failed[0].reason or "the scan failed")

    return run


@pages.get("/findings", response_class=HTMLResponse)
async def findings_page(service: ServiceDep, page: int = 1,
                        watch: Annotated[str | None, Query(max_length=128)] = None,
                        catalogue_image: Annotated[int | None, Query(ge=1)] = None,
                        gone: bool = False) -> HTMLResponse:
    """Findings grouped by catalogue image, the one found newest first, each with the
    match picture, the page, and when it was first and last seen."""
    per_page = 12
    total, groups = await run_in_threadpool(
        lambda: service.catalogue.finding_groups(watch, catalogue_image, None, gone,
                                                 max(1, page), per_page))
    watches = await run_in_threadpool(service.catalogue.watches)
    return html_page(render.findings_page(groups, total, max(1, page), per_page, watch,
                                          catalogue_image, gone, [w.name for w in watches]))
