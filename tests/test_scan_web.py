"""Scans over HTTP: `POST /api/scans` (a job, behind the API token, http(s) targets only,
through the server's SSRF guard), `GET /api/findings` (paged, filtered), each finding's
match picture and the `/findings` page."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from fastapi import FastAPI
from helpers import build_index, crop, jpeg, mirror, photo, synthetic, to_rgb

from echoimage.api import Catalogue
from echoimage.config import Settings
from echoimage.web.app import create_app
from echoimage.web.config import WebSettings

module_loop = pytest.mark.asyncio(loop_scope="module")
pytestmark = pytest.mark.stores
TOKEN = "scan-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def site_app() -> web.Application:
    """Two pages re-using catalogue photos (a mirrored coffee, a cropped rocket) among
    unrelated photos."""
    images = {"coffee.jpg": jpeg(mirror(to_rgb(photo("coffee")))),
              "rocket.jpg": jpeg(crop(to_rgb(photo("rocket")), 0.8)),
              "other.jpg": jpeg(synthetic(5))}
    html = {"/a.html": ["coffee.jpg", "other.jpg"], "/b.html": ["rocket.jpg", "coffee.jpg"]}

    async def page(request: web.Request) -> web.Response:
        body = "".join(f'<img src="/img/{n}">' for n in html[request.path])
        return web.Response(text=f"<html><body>{body}</body></html>",
                            content_type="text/html")

    async def image(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in images:
            raise web.HTTPNotFound()
        return web.Response(body=images[name], content_type="image/jpeg")

    app = web.Application()
    for path in html:
        app.router.add_get(path, page)
    app.router.add_get("/img/{name}", image)
    return app


@dataclass
class Served:
    app: FastAPI
    client: httpx.AsyncClient
    site: str
    settings: Settings


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory, catalogue,
                 module_store_url: str | None) -> AsyncIterator[Served]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("scan-web"), workers=1,
                        database_url=module_store_url, scrape_delay=0.0,
                        scan_image_delay=0.0)
    await asyncio.to_thread(build_index, settings, [str(catalogue.root)], False)
    site = TestServer(site_app(), host="127.0.0.1")
    await site.start_server()
    web_settings = WebSettings(url_allowlist=[f"127.0.0.1:{site.port}"], api_token=TOKEN)
    app = create_app(settings, web_settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app),
                                     base_url="http://testserver") as client:
            yield Served(app, client, f"http://127.0.0.1:{site.port}", settings)
    await site.close()


async def wait_job(served: Served, job: dict, timeout: float = 120.0) -> dict:
    running = served.app.state.service.jobs.get(job["id"])
    assert running is not None, job
    assert await asyncio.to_thread(running.wait, timeout), f"job {job['id']} is not done"
    return (await served.client.get(f"/api/jobs/{job['id']}")).json()


@module_loop
async def test_scans_need_the_token_and_take_urls_only(served: Served) -> None:
    body = {"targets": [f"{served.site}/a.html"]}
    assert (await served.client.post("/api/scans", json=body)).status_code == 401
    wrong = await served.client.post("/api/scans", json=body,
                                     headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    local = await served.client.post("/api/scans", json={"targets": ["/etc"]}, headers=AUTH)
    assert local.status_code == 422 and "http(s) URLs" in local.json()["detail"]
    both = await served.client.post("/api/scans", headers=AUTH,
                                    json={"targets": [f"{served.site}/a.html"], "watches": []})
    assert both.status_code == 422
    refused = await served.client.post("/api/scans", headers=AUTH,
                                       json={"targets": ["http://10.1.2.3/page.html"]})
    assert refused.status_code == 400 and "private address" in refused.json()["detail"]


@module_loop
async def test_without_an_api_token_there_is_no_scan_endpoint(built) -> None:
    app = create_app(built.settings, WebSettings())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app),
                                     base_url="http://testserver") as client:
            resp = await client.post("/api/scans", headers=AUTH, json={"targets": []})
            assert resp.status_code == 404


@module_loop
async def test_a_scan_job_then_its_findings(served: Served) -> None:
    resp = await served.client.post("/api/scans", headers=AUTH, json={
        "targets": [f"{served.site}/a.html", f"{served.site}/b.html"]})
    assert resp.status_code == 202 and resp.headers["location"].startswith("/api/jobs/")
    job = await wait_job(served, resp.json())
    assert job["status"] == "done", job
    assert job["counts"]["findings new"] == 3 and job["counts"]["images ok"] == 3
    made, ended = (datetime.fromisoformat(job[k]) for k in ("created_at", "finished_at"))
    assert made.tzinfo is not None and made <= ended  # ISO 8601 times, as the rest give
    assert len(job["result"]["findings"]) == 3

    listed = (await served.client.get("/api/findings")).json()
    assert listed["total"] == 3 and listed["pages"] == 1
    first = listed["results"][0]
    assert {"page", "image", "catalogue", "verdict", "score", "region", "transform",
            "first_seen", "last_seen", "links"} <= set(first)
    seen = [r["first_seen"] for r in listed["results"]]
    assert seen == sorted(seen, reverse=True)
    paged = (await served.client.get("/api/findings", params={"per_page": 2,
                                                               "page": 2})).json()
    assert paged["pages"] == 2 and len(paged["results"]) == 1
    rocket = next(r for r in listed["results"] if r["image"].endswith("rocket.jpg"))
    by_image = (await served.client.get("/api/findings", params={
        "catalogue_image": rocket["catalogue"]["id"]})).json()
    assert [r["id"] for r in by_image["results"]] == [rocket["id"]]
    later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    assert (await served.client.get("/api/findings", params={"since": later})).json()[
        "total"] == 0
    assert (await served.client.get("/api/findings", params={"watch": "none"})).json()[
        "total"] == 0
    bad = await served.client.get("/api/findings", params={"since": "yesterday"})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("since: "), bad.text
    past = await served.client.get("/api/findings", params={"per_page": 999})
    assert past.json() == {"detail": "per_page: Input should be less than or equal to 200"}
    said = (await served.client.get("/openapi.json")).json()["components"]["schemas"]
    assert said["HTTPValidationError"]["properties"]["detail"]["type"] == "string"

    png = await served.client.get(rocket["links"]["match_image"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    drawing = cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_COLOR)
    assert drawing is not None and drawing.shape[1] > drawing.shape[0]  # two pictures
    assert (await served.client.get("/api/findings/999999/match.png")).status_code == 404

    page = await served.client.get("/findings")
    assert page.status_code == 200 and "Content-Security-Policy" in page.headers
    text = page.text
    assert text.count('class="finding-group"') == 2
    assert f'href="{served.site}/b.html"' in text and rocket["links"]["match_image"] in text

    again = await served.client.post("/api/scans", headers=AUTH, json={
        "targets": [f"{served.site}/a.html", f"{served.site}/b.html"], "all": True})
    job = await wait_job(served, again.json())
    assert job["counts"]["findings new"] == 0 and job["counts"]["images unchanged"] == 3
    assert len(job["result"]["findings"]) == 3  # all: every finding seen


@module_loop
async def test_watch_scans_over_http(served: Served) -> None:
    def add() -> None:
        with Catalogue(served.settings) as cat:
            cat.add_watch("b-page", f"{served.site}/b.html")

    await asyncio.to_thread(add)
    resp = await served.client.post("/api/scans", headers=AUTH, json={"watches": ["b-page"]})
    job = await wait_job(served, resp.json())
    assert job["status"] == "done" and job["result"]["scans"][0]["watch"] == "b-page"
    mine = (await served.client.get("/api/findings", params={"watch": "b-page"})).json()
    assert mine["total"] == 2
    assert all(r["watches"] == ["b-page"] for r in mine["results"])
    page = await served.client.get("/findings", params={"watch": "b-page"})
    assert page.text.count('class="finding"') == 2
    unknown = await served.client.post("/api/scans", headers=AUTH, json={"watches": ["x"]})
    failed = await wait_job(served, unknown.json())
    assert failed["status"] == "failed" and "no watch named x" in failed["error"]


@pytest.mark.slow
def test_the_readmes_curl_lines_run_as_written(catalogue, tmp_path: Path) -> None:
    """The README's curl lines for scans, against `echoimage serve` on a free port (the
    test site for the example's host): the findings of a watch, a scan job started, then
    its result."""
    import json
    import os
    import subprocess
    import time

    from helpers import ServerThread, serving
    from test_scan import readme_scan_section

    (*_, lines), _ = readme_scan_section()
    findings, start, job_line = lines
    site = ServerThread(site_app())
    base = site.start()
    settings = Settings(data_dir=tmp_path / "data", workers=1, scrape_delay=0.0,
                        scan_image_delay=0.0, scan_allowlist=["127.0.0.1"])
    try:
        build_index(settings, [str(catalogue.root)], False)
        with Catalogue(settings) as cat:
            cat.add_watch("shop-a", f"{base}/a.html")
            assert cat.scan_watches("shop-a")[0].new
        web_settings = WebSettings(url_allowlist=["127.0.0.1"], api_token=TOKEN)
        with serving(settings, web_settings) as server:
            def curl(line: str) -> dict:
                line = line.replace("http://127.0.0.1:8000", server).replace(
                    "https://shop-b.example/", f"{base}/b.html")
                proc = subprocess.run(["bash", "-c", line + " --fail-with-body -s"],
                                      env={**os.environ, "TOKEN": TOKEN}, capture_output=True,
                                      text=True, timeout=120)
                assert proc.returncode == 0, (line, proc.stdout, proc.stderr)
                return json.loads(proc.stdout)

            listed = curl(findings)
            assert listed["total"] == 1 and listed["per_page"] == 20
            assert listed["results"][0]["watches"] == ["shop-a"]
            assert listed["results"][0]["links"]["match_image"].endswith("/match.png")
            job = curl(start)
            assert job["kind"] == "scan" and job["status"] in ("queued", "running", "done")
            deadline = time.monotonic() + 120
            while (done := curl(job_line.replace("JOB_ID", job["id"])))["status"] in (
                    "queued", "running"):
                assert time.monotonic() < deadline, done
                time.sleep(0.2)
            assert done["status"] == "done", done
            assert {f["page"] for f in done["result"]["findings"]} == {f"{base}/b.html"}
            assert len(done["result"]["findings"]) == 2
    finally:
        site.stop()
