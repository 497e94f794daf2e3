"""The catalogue over HTTP: tokens, adding a page's images and image URLs as jobs (through
the SSRF guard), removing an image, jobs, and the duplicates API and page."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from fastapi import FastAPI
from helpers import build_index, jpeg, mirror, photo, synthetic

from echoimage.config import Settings
from echoimage.web.app import create_app
from echoimage.web.config import WebSettings

module_loop = pytest.mark.asyncio(loop_scope="module")
pytestmark = pytest.mark.stores
TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def shop_app() -> web.Application:
    """A shop: a product page with three images (one of them broken), a page with none, a
    page that fails, and the images."""
    images = {f"p{i}.jpg": jpeg(synthetic(300 + i, 320), 90) for i in range(3)}
    images["mirror.jpg"] = jpeg(mirror(synthetic(300, 320)), 85)

    async def page(request: web.Request) -> web.Response:
        body = "".join(f'<img src="/img/{n}" alt="{n}">' for n in ("p0.jpg", "p1.jpg",
                                                                       "broken.jpg"))
        return web.Response(text=f"<html><body>{body}</body></html>",
                            content_type="text/html")

    async def empty(request: web.Request) -> web.Response:
        return web.Response(text="<html><body><p>no pictures</p></body></html>",
                            content_type="text/html")

    async def image(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "redirect.jpg":  # to the cloud metadata address
            raise web.HTTPFound("http://169.254.169.254/latest/meta-data/x.jpg")
        if name not in images:
            raise web.HTTPNotFound()
        return web.Response(body=images[name], content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/shop.html", page)
    app.router.add_get("/empty.html", empty)
    app.router.add_get("/img/{name}", image)
    return app


@dataclass
class Admin:
    app: FastAPI
    client: httpx.AsyncClient
    shop: str
    settings: Settings


def web_settings(allow: list[str], **kw: object) -> WebSettings:
    return WebSettings(url_allowlist=allow, url_timeout=3.0, **kw)  # type: ignore[arg-type]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def admin(tmp_path_factory: pytest.TempPathFactory, catalogue,
                module_store_url: str | None) -> AsyncIterator[Admin]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("admin-data"), workers=1,
                        database_url=module_store_url)
    await asyncio.to_thread(build_index, settings, [str(catalogue.root)], False)
    shop = TestServer(shop_app(), host="127.0.0.1")
    await shop.start_server()
    app = create_app(settings, web_settings([f"127.0.0.1:{shop.port}"], api_token=TOKEN))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app),
                                     base_url="http://testserver") as client:
            yield Admin(app, client, f"http://127.0.0.1:{shop.port}", settings)
    await shop.close()


async def wait_job(admin: Admin, job: dict, timeout: float = 60.0) -> dict:
    """The job as `GET /api/jobs/{id}` shows it once it has finished (waited on in the
    server's job manager, for at most timeout seconds)."""
    running = admin.app.state.service.jobs.get(job["id"])
    assert running is not None, job
    assert await asyncio.to_thread(running.wait, timeout), f"job {job['id']} is not done"
    return (await admin.client.get(f"/api/jobs/{job['id']}")).json()


async def caught_up(app: FastAPI, timeout: float = 10.0) -> None:
    """Wait until the serving index has taken in the store's changes: its background
    refresh (started now if the index is behind) is waited on, at most timeout seconds."""
    live = app.state.service.catalogue.search_engine.live

    def refresh() -> None:
        live.current()
        live.wait(timeout)

    await asyncio.to_thread(refresh)


async def search_top(admin: Admin, data: bytes) -> dict:
    """The top result, asked once the serving index has caught up with the store."""
    await caught_up(admin.app)
    resp = await admin.client.post("/api/search", files={"file": ("q.jpg", data)},
                                   data={"k": "1"})
    assert resp.status_code == 200
    return resp.json()["results"][0]


@module_loop
async def test_write_endpoints_need_the_token(admin: Admin) -> None:
    calls = [("post", "/api/catalogue/pages", {"page_url": f"{admin.shop}/shop.html"}),
             ("post", "/api/catalogue/images", {"urls": [f"{admin.shop}/img/p2.jpg"]}),
             ("delete", "/api/images/1", None)]
    for method, path, body in calls:
        kw = {"json": body} if body is not None else {}
        missing = await admin.client.request(method, path, **kw)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        wrong = await admin.client.request(method, path, headers={
            "Authorization": "Bearer nope"}, **kw)
        assert wrong.status_code == 403
        basic = await admin.client.request(method, path, headers={
            "Authorization": f"Basic {TOKEN}"}, **kw)
        assert basic.status_code == 401


@module_loop
async def test_without_an_api_token_the_write_endpoints_do_not_exist(tmp_path: Path,
                                                                     built) -> None:
    app = create_app(built.settings, web_settings([]))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app),
                                     base_url="http://testserver") as client:
            for method, path in (("post", "/api/catalogue/pages"),
                                 ("post", "/api/catalogue/images"),
                                 ("delete", "/api/images/1")):
                resp = await client.request(method, path, headers=AUTH, json={})
                assert resp.status_code == 404


@module_loop
async def test_add_a_page_then_search_then_remove(admin: Admin) -> None:
    resp = await admin.client.post("/api/catalogue/pages", headers=AUTH,
                                   json={"page_url": f"{admin.shop}/shop.html"})
    assert resp.status_code == 202 and resp.headers["location"].startswith("/api/jobs/")
    job = await wait_job(admin, resp.json())
    assert job["status"] == "done", job
    assert job["counts"]["indexed"] == 2 and job["counts"].get("gone") == 1  # the 404
    assert any("broken.jpg" in e for e in job["errors"])
    top = await search_top(admin, jpeg(synthetic(301, 320), 70))
    assert top["url"] == f"{admin.shop}/img/p1.jpg" and top["duplicate"]

    resp = await admin.client.delete(f"/api/images/{top['id']}", headers=AUTH)
    assert resp.status_code == 200 and resp.json()["removed"][0]["id"] == top["id"]
    again = await search_top(admin, jpeg(synthetic(301, 320), 70))  # the index followed
    assert again["id"] != top["id"]
    assert (await admin.client.delete(f"/api/images/{top['id'] + 10**6}",
                                      headers=AUTH)).status_code == 404


@module_loop
async def test_pages_that_fail_add_nothing(admin: Admin) -> None:
    before = (await admin.client.get("/api/stats")).json()["total_images"]
    for page in ("/missing.html", "/empty.html"):
        resp = await admin.client.post("/api/catalogue/pages", headers=AUTH,
                                       json={"page_url": f"{admin.shop}{page}"})
        job = await wait_job(admin, resp.json())
        assert job["status"] == "failed" and "\n" not in job["error"], job
        assert ("no page could be read" in job["error"] or "no image URLs" in job["error"])
    assert (await admin.client.get("/api/stats")).json()["total_images"] == before


@module_loop
async def test_urls_pass_the_ssrf_guard(admin: Admin) -> None:
    for url in ("http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:9/x.jpg",
                "http://localhost:9/x.jpg", "file:///etc/passwd", "http://[::1]:9/x.jpg"):
        for path, body in (("/api/catalogue/pages", {"page_url": url}),
                           ("/api/catalogue/images", {"urls": [url]})):
            resp = await admin.client.post(path, headers=AUTH, json=body)
            assert resp.status_code in (400, 422), (url, resp.text)
    # an allowed page that links to a forbidden image: the image is refused on fetching
    resp = await admin.client.post("/api/catalogue/images", headers=AUTH,
                                   json={"urls": [f"{admin.shop}/img/redirect.jpg"]})
    job = await wait_job(admin, resp.json())
    assert job["status"] == "done" and job["counts"].get("indexed", 0) == 0, job
    assert any("refused" in e for e in job["errors"]), job


@module_loop
async def test_concurrent_jobs(admin: Admin) -> None:
    """Two jobs adding the same images at once: both finish, each image is in the store
    and in the index once."""
    from helpers import verify_index

    urls = [f"{admin.shop}/img/p2.jpg", f"{admin.shop}/img/mirror.jpg"]
    before = (await admin.client.get("/api/stats")).json()["total_images"]
    first, second = await asyncio.gather(*(admin.client.post(
        "/api/catalogue/images", headers=AUTH, json={"urls": urls}) for _ in range(2)))
    jobs = await asyncio.gather(wait_job(admin, first.json()), wait_job(admin, second.json()))
    assert all(j["status"] == "done" for j in jobs), jobs
    assert all(j["counts"].get("indexed", 0) + j["counts"].get("already-indexed", 0) == 2
               for j in jobs), jobs
    assert (await admin.client.get("/api/stats")).json()["total_images"] == before + 2
    report = await asyncio.to_thread(verify_index, admin.settings, False)
    assert report.ok and not report.counts, report.as_dict()
    top = await search_top(admin, jpeg(synthetic(302, 320), 70))
    assert top["url"] == urls[0]


@module_loop
async def test_duplicates_api_and_page(admin: Admin) -> None:
    """The catalogue's duplicates (a mirrored copy among them) over the API and the page.
    The product and its mirrored copy are added here too (already there when the tests
    before ran in this process: the test runner may give them to another one)."""
    add = await admin.client.post("/api/catalogue/images", headers=AUTH, json={"urls": [
        f"{admin.shop}/img/p0.jpg", f"{admin.shop}/img/mirror.jpg"]})
    assert (await wait_job(admin, add.json()))["status"] == "done"
    resp = await admin.client.get("/api/duplicates", params={"per_page": 5})
    if resp.status_code == 202:  # worked out in a job: wait for it, then ask again
        job = resp.json()["job"]
        assert job["kind"] == "dedupe" and resp.headers["Location"] == f"/api/jobs/{job['id']}"
        assert (await wait_job(admin, job))["status"] == "done"
        resp = await admin.client.get("/api/duplicates", params={"per_page": 5})
    body = resp.json()
    assert resp.status_code == 200 and body["page"] == 1
    mirrored = [g for g in body["results"]
                if {m["url"].rsplit("/", 1)[-1] for m in g["members"]} >= {"mirror.jpg"}]
    assert mirrored and mirrored[0]["members"][1]["orientation"] == "mirror"
    page = await admin.client.get("/duplicates")
    assert page.status_code == 200 and "Duplicates in the catalogue" in page.text
    assert "/preview" in page.text
    for asked in ("99", "abc", "0"):  # a page past the last, or none: the nearest one
        other = await admin.client.get("/duplicates", params={"page": asked})
        assert other.status_code == 200 and other.text == page.text, asked


@module_loop
async def test_search_token_closes_searching(tmp_path: Path, built) -> None:
    app = create_app(built.settings, web_settings([], search_token="seek"))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app),
                                     base_url="http://testserver") as client:
            q = {"files": {"file": ("q.jpg", jpeg(photo("coffee"), 70))}}
            assert (await client.post("/api/search", **q)).status_code == 401
            ok = await client.post("/api/search", headers={"Authorization": "Bearer seek"},
                                   **q)
            assert ok.status_code == 200
            assert (await client.get("/")).status_code == 401
            assert (await client.get("/health")).status_code == 200
