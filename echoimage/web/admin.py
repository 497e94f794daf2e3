"""The catalogue over HTTP: adding a scraped page's images or a list of image URLs (as
background jobs), removing an image, following jobs, and the catalogue's duplicates.

Write endpoints exist only when the server has an API token (`ECHOIMAGE_API_TOKEN`) and
need it as a bearer token; every URL they are given is fetched through the same SSRF guard
as URL queries. Reading (jobs, duplicates) is open unless the server has a search token.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.concurrency import run_in_threadpool

from echoimage.api import API_SOURCE, is_url, scrape_pages
from echoimage.errors import CatalogueError
from echoimage.types import CatalogueItem
from echoimage.web.deps import AdminDep, ImageIdDep, ServiceDep, require_reader
from echoimage.web.jobs import Job
from echoimage.web.service import WebService

router = APIRouter(tags=["catalogue"])


class PageRequest(BaseModel):
    """A page to scrape into the catalogue."""

    model_config = ConfigDict(extra="forbid")

    page_url: str = Field(description="http(s) URL of a page whose images to add")
    follow_pages: StrictInt = Field(0, ge=0, le=100,
                                    description="also follow up to N same-site links")


class ImagesRequest(BaseModel):
    """Image URLs to add to the catalogue."""

    model_config = ConfigDict(extra="forbid")

    urls: list[str] = Field(min_length=1, description="http(s) image URLs")


async def _check_url(service: WebService, url: str) -> str:
    """The URL, stripped, if the SSRF policy lets it be fetched (400 or 422 if not; the
    fetcher checks again at every connection and redirect)."""
    url = url.strip()
    if not is_url(url):
        raise HTTPException(422, f"not an http(s) URL: {url[:200]!r}")
    problem = await service.policy.check(url)
    if problem:
        raise HTTPException(400, f"refused {url[:200]}: {problem}")
    return url


def _index_into(job: Job, service: WebService, uri: str, kind: str,
                items: list[CatalogueItem], follow_pages: int | None = None) -> None:
    """Index items as the source uri's (every URL through the server's SSRF guard),
    recording the outcome on the job."""
    job.progress(0, len(items))
    summary = service.catalogue.add(items, uri, kind, url_policy=service.policy,
                                    on_progress=job.progress, follow_pages=follow_pages)
    job.counts = dict(summary.counts)
    job.errors.extend(f"{status}: {url}: {reason}" for url, status, reason in
                      summary.failures)
    job.result = {"source": uri, "index": summary.index,
                  "indexed": summary.counts.get("indexed", 0)}


def _add_page(service: WebService, req: PageRequest) -> Any:
    def run(job: Job) -> None:
        report = scrape_pages([req.page_url], req.follow_pages, url_policy=service.policy,
                              settings=service.settings)
        job.errors.extend(report.notes)
        if not report.images:
            raise CatalogueError(f"{req.page_url}: no image URLs found on "
                                 f"{len(report.pages)} page(s); nothing added")
        items = [CatalogueItem(e["url"], req.page_url,
                               {k: v for k, v in e.items() if k != "url"})
                 for e in report.images]
        _index_into(job, service, req.page_url, "page", items, req.follow_pages)
        job.result["pages"] = report.pages

    return run


@router.post("/api/catalogue/pages", status_code=202)
async def add_page(req: PageRequest, service: ServiceDep, _: AdminDep) -> JSONResponse:
    """Scrape a page (and up to follow_pages linked ones) like `echoimage catalogue
    scrape`, add its images to the catalogue and index them, as a background job."""
    url = await _check_url(service, req.page_url)
    job = service.jobs.submit("add-page", {"page_url": url,
                                           "follow_pages": req.follow_pages},
                              _add_page(service, req.model_copy(update={"page_url": url})))
    return JSONResponse(job.as_dict(), status_code=202,
                        headers={"Location": f"/api/jobs/{job.id}"})


@router.post("/api/catalogue/images", status_code=202)
async def add_images(req: ImagesRequest, service: ServiceDep, _: AdminDep) -> JSONResponse:
    """Add image URLs to the catalogue and index them, as a background job."""
    if len(req.urls) > service.web.max_api_urls:
        raise HTTPException(413, f"at most {service.web.max_api_urls} URLs per request")
    urls = list(dict.fromkeys([await _check_url(service, u) for u in req.urls]))
    items = [CatalogueItem(u, API_SOURCE) for u in urls]
    job = service.jobs.submit("add-images", {"urls": len(urls)},
                              lambda job: _index_into(job, service, API_SOURCE, "api", items))
    return JSONResponse(job.as_dict(), status_code=202,
                        headers={"Location": f"/api/jobs/{job.id}"})


@router.delete("/api/images/{image_id}")
async def delete_image(image_id: ImageIdDep, service: ServiceDep, _: AdminDep
                       ) -> dict[str, Any]:
    """Take an image out of the catalogue; the index follows at once."""
    report = await run_in_threadpool(service.catalogue.remove, image_id)
    if report.unknown:
        raise HTTPException(404, f"no catalogue image has id {image_id}")
    return report.as_dict()


@router.get("/api/jobs/{job_id}", dependencies=[Depends(require_reader)])
async def job_status(job_id: str, service: ServiceDep) -> dict[str, Any]:
    """A background job: status, progress, counts, one-line errors and result."""
    job = service.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id[:64]!r} (jobs are kept for a while only)")
    return job.as_dict()


@router.get("/api/duplicates", dependencies=[Depends(require_reader)])
async def duplicates(service: ServiceDep,
                     page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
                     per_page: Annotated[int, Query(ge=1, le=200)] = 20,
                     crops: bool = False) -> JSONResponse:
    """Groups of duplicates among the catalogue's images (as `echoimage dedupe --json`),
    paged. Worked out in a background job for the store's current change: until it is
    done the answer is 202 with the job (poll `GET /api/jobs/{id}`, then ask again)."""
    result, job = await run_in_threadpool(service.duplicates, crops)
    if result is None:
        assert job is not None
        return JSONResponse({"status": "computing", "job": job.as_dict()}, status_code=202,
                            headers={"Location": f"/api/jobs/{job.id}", "Retry-After": "2"})
    groups = result.groups
    start = (page - 1) * per_page
    return JSONResponse({
        **result.summary(), "page": page, "per_page": per_page,
        "pages": max(1, -(-len(groups) // per_page)),
        "results": [g.to_dict() for g in groups[start:start + per_page]]})
