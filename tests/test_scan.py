"""`echoimage scan`: copies of catalogue images found on pages of an aiohttp site on
127.0.0.1, remembered in the store (SQLite and PostgreSQL), re-scans that fetch and compare
only what changed, findings gone, bad input as per-item statuses, a killed scan resumed,
watches, webhooks, lists and folders, and the command line's output and exit status."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner
from helpers import (
    REPO,
    ServerThread,
    crop,
    jpeg,
    mirror,
    photo,
    resize,
    rot90,
    store_url,
    synthetic,
    to_rgb,
    write,
)
from pydantic import SecretStr
from sqlalchemy import create_engine, func, select, text

from echoimage.api import SIGNATURE_HEADER, Catalogue, verify_signature
from echoimage.cli import cli
from echoimage.config import Settings
from echoimage.errors import ScanError
from echoimage.store.models import Finding
from echoimage.types import ScanStatus

pytestmark = [pytest.mark.stores, pytest.mark.usefixtures("no_network")]


@dataclass
class Route:
    """What the test site answers on one path."""

    body: bytes = b""
    ctype: str = "text/html"
    status: int = 200
    delay: float = 0.0
    location: str | None = None


@dataclass
class ScanSite:
    """A site whose pages and images a test changes as it goes; every request is logged
    (path, whether it was conditional, the status answered)."""

    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, bool, int]] = field(default_factory=list)
    base: str = ""

    def url(self, path: str) -> str:
        return self.base + path

    def page(self, path: str, images: list[str], links: list[str] = ()) -> None:
        body = "".join(f'<img src="{i}">' for i in images)
        body += "".join(f'<a href="{a}">link</a>' for a in links)
        self.routes[path] = Route(f"<!doctype html><html><body>{body}</body></html>".encode())

    def image(self, path: str, data: bytes, delay: float = 0.0) -> None:
        self.routes[path] = Route(data, "image/jpeg", delay=delay)

    def since(self, start: int) -> list[tuple[str, bool, int]]:
        return self.requests[start:]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        route = self.routes.get(request.path)
        conditional = "If-None-Match" in request.headers
        if route is None:
            self.requests.append((request.path, conditional, 404))
            return web.Response(status=404, text="not found")
        if route.delay:
            await asyncio.sleep(route.delay)
        if route.location is not None:
            self.requests.append((request.path, conditional, 302))
            raise web.HTTPFound(route.location)
        if route.status != 200:
            self.requests.append((request.path, conditional, route.status))
            return web.Response(status=route.status, text="no")
        etag = '"' + hashlib.sha256(route.body).hexdigest()[:20] + '"'
        if request.headers.get("If-None-Match") == etag:
            self.requests.append((request.path, conditional, 304))
            return web.Response(status=304, headers={"ETag": etag})
        self.requests.append((request.path, conditional, 200))
        return web.Response(body=route.body, content_type=route.ctype, headers={"ETag": etag})


@pytest.fixture
def site() -> Iterator[ScanSite]:
    """A small shop that re-uses two catalogue photos: a mirrored coffee on two pages and
    a cropped rocket, among unrelated photos."""
    s = ScanSite()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", s.handle)
    server = ServerThread(app)
    s.base = server.start()
    s.routes["/robots.txt"] = Route(b"User-agent: *\nDisallow: /private/\n", "text/plain")
    s.image("/img/coffee-mirror.jpg", jpeg(mirror(to_rgb(photo("coffee")))))
    s.image("/img/rocket-crop.jpg", jpeg(crop(to_rgb(photo("rocket")), 0.7)))
    s.image("/img/other1.jpg", jpeg(synthetic(1)))
    s.image("/img/other2.jpg", jpeg(synthetic(2)))
    s.page("/index.html", ["/img/coffee-mirror.jpg", "/img/other1.jpg"], ["/page2.html"])
    s.page("/page2.html", ["/img/rocket-crop.jpg", "/img/coffee-mirror.jpg",
                           "/img/other2.jpg"], ["/index.html"])
    try:
        yield s
    finally:
        server.stop()


def scan_settings(settings: Settings, **changes: Any) -> Settings:
    """settings as a scan of the local test site needs them: 127.0.0.1 allowed, no
    politeness delays, short timeouts."""
    return settings.model_copy(update={"scan_allowlist": ["127.0.0.1"], "scrape_delay": 0.0,
                                       "scan_image_delay": 0.0, "http_timeout": 1.5,
                                       **changes})


def found(report: Any) -> set[tuple[str, str, str]]:
    """(page path, image path, catalogue photo's file name) of a report's findings."""
    return {(f.page.split(":", 2)[2].split("/", 1)[1], f.image.split(":", 2)[2].split("/", 1)[1],
             Path(f.catalogue_url).stem) for f in report.findings}


EXPECTED = {("index.html", "img/coffee-mirror.jpg", "coffee"),
            ("page2.html", "img/coffee-mirror.jpg", "coffee"),
            ("page2.html", "img/rocket-crop.jpg", "rocket")}


def test_scan_finds_copies_and_remembers_them(built_copy, site: ScanSite) -> None:
    """Each copy is a finding: page, image, catalogue image with its verdict, score,
    region and transform, first and last seen; the same image on two pages is two
    findings; unrelated photos are none."""
    settings = scan_settings(built_copy.settings)
    with Catalogue(settings) as cat:
        report = cat.scan(site.url("/index.html"), follow_pages=5)
        assert report.ok and report.scan_id >= 1
        assert found(report) == EXPECTED
        assert all(f.new for f in report.findings) and len(report.new) == 3
        assert report.pages == {ScanStatus.OK: 2}
        assert report.images == {ScanStatus.OK: 4} and report.compared == 4
        coffee = next(f for f in report.findings if "coffee" in f.image)
        assert coffee.verdict in ("duplicate", "exact") and coffee.score >= 0.5
        assert coffee.transform["mirror"] is True and len(coffee.region) == 4
        assert coffee.first_seen == coffee.last_seen and coffee.gone_at is None
        rocket = next(f for f in report.findings if "rocket" in f.image)
        assert rocket.catalogue_url == built_copy.catalogue.url("rocket")
        assert rocket.transform["covered_fraction"] < 0.7
        total, listed = cat.findings()
        assert total == 3 and {f.id for f in listed} == {f.id for f in report.findings}
        picture = cat.found_picture(coffee.id)
        assert picture is not None and picture.picture[:2] == b"\xff\xd8"
        assert picture.pairs is not None and picture.pairs.shape[1] == 4
        assert cat.recent_scans()[0]["status"] == "ok"


def test_rescan_fetches_and_compares_only_what_changed(built_copy, site: ScanSite) -> None:
    """A re-scan of the unchanged site: every page and image answers 304 to its stored
    ETag, nothing is decoded or compared, no finding is new (--all lists them, not new).
    Then: an image dropped from a page, an image replaced by an unrelated one, a page gone
    (404): their findings are marked gone with the reason; back again, they are seen again
    without being new."""
    settings = scan_settings(built_copy.settings)
    with Catalogue(settings) as cat:
        cat.scan(site.url("/index.html"), follow_pages=5)
        start = len(site.requests)
        again = cat.scan(site.url("/index.html"), follow_pages=5)
        fetched = [r for r in site.since(start) if r[0] != "/robots.txt"]
        assert fetched and all(cond and status == 304 for _, cond, status in fetched), fetched
        assert again.compared == 0 and again.images == {ScanStatus.UNCHANGED: 4}
        assert again.pages == {ScanStatus.UNCHANGED: 2}
        assert again.findings == [] and again.seen == 3
        every = cat.scan(site.url("/index.html"), follow_pages=5, report_all=True)
        assert found(every) == EXPECTED and not any(f.new for f in every.findings)

        site.page("/page2.html", ["/img/coffee-mirror.jpg", "/img/other2.jpg"])
        changed = cat.scan(site.url("/index.html"), follow_pages=5)
        assert [(Path(f.image).name, f.gone_reason) for f in changed.gone] == \
            [("rocket-crop.jpg", "the image is no longer on the page")]
        site.image("/img/coffee-mirror.jpg", jpeg(synthetic(7)))
        replaced = cat.scan(site.url("/index.html"), follow_pages=5)
        assert replaced.compared == 1
        assert {(Path(f.page).name, f.gone_reason) for f in replaced.gone} == {
            ("index.html", "the image changed and is no longer a copy"),
            ("page2.html", "the image changed and is no longer a copy")}
        assert cat.findings()[0] == 0 and cat.findings(include_gone=True)[0] == 3

        site.image("/img/coffee-mirror.jpg", jpeg(mirror(to_rgb(photo("coffee")))))
        del site.routes["/index.html"]
        gone_page = cat.scan(site.url("/index.html"), follow_pages=5)
        assert gone_page.pages == {ScanStatus.GONE: 1}  # its links are not known any more
        assert gone_page.failures[0].reason.startswith("HTTP 404")
        back = cat.scan(site.url("/page2.html"))
        assert found(back) == set()  # seen before, reported before: not new
        assert back.seen == 1 and cat.findings()[0] == 1


def test_bad_input_is_a_status_per_item_and_the_scan_goes_on(built_copy, site: ScanSite
                                                              ) -> None:
    """Pages that are not HTML, too large, disallowed by robots.txt, redirect loops,
    4xx/5xx, a slow host and images that fail to decode: each a status with a one-line
    reason in the report; the copies are still found."""
    site.image("/img/broken.jpg", b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 20)
    site.routes["/img/error.jpg"] = Route(status=503)
    site.routes["/img/loop.jpg"] = Route(location="/img/loop.jpg")
    site.image("/img/slow.jpg", jpeg(synthetic(3)), delay=4.0)
    site.image("/private/secret.jpg", jpeg(synthetic(4)))
    site.routes["/notes.pdf"] = Route(b"%PDF-1.4 not a page", "application/pdf")
    site.routes["/big.html"] = Route(b"<html>" + b" " * (11 * 1024 * 1024))
    site.routes["/down.html"] = Route(status=500)
    site.page("/index.html", ["/img/coffee-mirror.jpg", "/img/broken.jpg", "/img/error.jpg",
                              "/img/loop.jpg", "/img/slow.jpg", "/img/missing.jpg",
                              "/private/secret.jpg"],
              ["/page2.html", "/notes.pdf", "/big.html", "/private/p.html", "/down.html"])
    settings = scan_settings(built_copy.settings)
    with Catalogue(settings) as cat:
        report = cat.scan(site.url("/index.html"), follow_pages=10)
    assert report.ok and found(report) == EXPECTED
    got = {(f.kind, Path(f.url).name): f.status for f in report.failures}
    assert got == {
        ("image", "broken.jpg"): ScanStatus.DECODE_ERROR,
        ("image", "error.jpg"): ScanStatus.HTTP_ERROR,
        ("image", "loop.jpg"): ScanStatus.REDIRECT_ERROR,
        ("image", "slow.jpg"): ScanStatus.TIMEOUT,
        ("image", "missing.jpg"): ScanStatus.GONE,
        ("image", "secret.jpg"): ScanStatus.DISALLOWED,
        ("page", "notes.pdf"): ScanStatus.NOT_HTML,
        ("page", "big.html"): ScanStatus.TOO_LARGE,
        ("page", "p.html"): ScanStatus.DISALLOWED,
        ("page", "down.html"): ScanStatus.HTTP_ERROR,
    }
    for f in report.failures:
        assert f.reason and "\n" not in f.reason and len(f.reason) <= 500
    assert ("/private/secret.jpg", False, 200) not in site.requests


def test_catalogue_changes_make_the_next_scan_compare_again(built_copy, site: ScanSite,
                                                            tmp_path: Path) -> None:
    """A photo the catalogue gains after a scan is found by the next scan of the same,
    unchanged page (the catalogue's change number moved on)."""
    newcomer = write(tmp_path / "newcomer.jpg", jpeg(synthetic(2)))
    settings = scan_settings(built_copy.settings)
    with Catalogue(settings) as cat:
        first = cat.scan(site.url("/page2.html"))
        assert {Path(f.image).name for f in first.findings} == {"coffee-mirror.jpg",
                                                                 "rocket-crop.jpg"}
        cat.build(str(newcomer))
        second = cat.scan(site.url("/page2.html"))
        assert second.compared == 3
        assert [(Path(f.image).name, f.catalogue_url, f.new) for f in second.findings] == \
            [("other2.jpg", str(newcomer.resolve()), True)]


def test_private_addresses_are_refused_unless_allowed(built_copy, site: ScanSite) -> None:
    """Without the allow-list a scan does not fetch from 127.0.0.1: the scan fails with
    the reason, which says how to allow it, and the site saw no request."""
    settings = scan_settings(built_copy.settings, scan_allowlist=[])
    with Catalogue(settings) as cat:
        report = cat.scan(site.url("/index.html"))
    assert not report.ok and site.requests == []
    assert report.failures[0].status in (ScanStatus.BAD_URL, ScanStatus.REFUSED)
    assert "127.0.0.1 is a loopback address (ECHOIMAGE_SCAN_ALLOWLIST lets a scan reach " \
        "it)" in report.reason, report.reason


def test_lists_folders_and_images_json(built_copy, site: ScanSite, tmp_path: Path) -> None:
    """A folder (re-scanned by size and modification time), a text list of image URLs, an
    images.json whose entries name their page (the scraper's output), a single image URL."""
    folder = tmp_path / "downloads"
    write(folder / "a.jpg", jpeg(resize(to_rgb(photo("astronaut")), 0.5)))
    write(folder / "b.jpg", jpeg(synthetic(9)))
    listing = write(tmp_path / "urls.txt", f"{site.url('/img/rocket-crop.jpg')}\n"
                                           f"{site.url('/img/other1.jpg')}\n".encode())
    doc = [{"url": site.url("/img/coffee-mirror.jpg"), "page": "https://shop.example/p/1"},
           {"url": site.url("/img/other2.jpg"), "page": "https://shop.example/p/2"}]
    images_json = write(tmp_path / "images.json", json.dumps(doc).encode())
    settings = scan_settings(built_copy.settings)
    with Catalogue(settings) as cat:
        report = cat.scan(folder, listing, images_json, site.url("/img/rocket-crop.jpg"))
        pages = {(f.page, Path(f.catalogue_url).stem) for f in report.findings}
        assert pages == {(str(folder.resolve()), "astronaut"),
                         (str(listing.resolve()), "rocket"),
                         ("https://shop.example/p/1", "coffee"),
                         (site.url("/img/rocket-crop.jpg"), "rocket")}
        assert report.compared == 6
        again = cat.scan(folder)
        assert again.compared == 0 and again.images == {ScanStatus.UNCHANGED: 2}
        time.sleep(0.01)
        write(folder / "b.jpg", jpeg(synthetic(10)))
        (folder / "a.jpg").unlink()
        changed = cat.scan(folder)
        assert changed.compared == 1
        assert [f.gone_reason for f in changed.gone] == ["the image is no longer on the page"]


def test_findings_filters_and_groups(built_copy, site: ScanSite) -> None:
    """Findings by watch, by catalogue image, first seen since a time; grouped by
    catalogue image, the one found newest first."""
    settings = scan_settings(built_copy.settings)
    with Catalogue(settings) as cat:
        assert cat.add_watch("shop", site.url("/page2.html")) is True
        cat.scan_watches("shop")
        cat.scan(site.url("/index.html"))
        assert cat.findings(watch="shop")[0] == 2
        rocket = next(f for f in cat.findings(watch="shop")[1] if "rocket" in f.image)
        assert rocket.watches == ["shop"]
        assert cat.findings(catalogue_image=rocket.catalogue_id)[0] == 1
        later = datetime.now(UTC) + timedelta(seconds=5)
        assert cat.findings(since=later)[0] == 0
        assert cat.findings(since="2000-01-01")[0] == 3
        total, groups = cat.finding_groups()
        assert total == 2
        assert sorted(len(g.findings) for g in groups) == [1, 2]
        assert groups[0].findings[0].first_seen >= groups[1].findings[0].first_seen
        with pytest.raises(ScanError, match="no watch named nope"):
            cat.scan_watches("nope")
        assert cat.remove_watch("shop") and not cat.remove_watch("shop")
        assert cat.findings()[0] == 3  # a watch's findings stay


class Receiver:
    """A webhook receiver: answers the statuses it is given in turn (then 200) and keeps
    what it got."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.got: list[tuple[bytes, dict[str, str]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.got.append((body, dict(request.headers)))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    rec = Receiver([])
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    server = ServerThread(app)
    base = server.start()
    try:
        yield rec, base + "/hook"
    finally:
        server.stop()


def test_webhook_signed_retried_and_delivered_again(built_copy, site: ScanSite,
                                                    receiver: tuple[Receiver, str]) -> None:
    """Each new finding is POSTed as JSON with an HMAC-SHA256 signature of the body; a 503
    is tried again; findings the receiver never took are reported and delivered again by
    the next scan; a webhook without a secret is refused before anything is scanned, and
    so is a watch that would notify one (not only later, by its scheduled scan)."""
    rec, hook = receiver
    with Catalogue(scan_settings(built_copy.settings)) as cat:
        with pytest.raises(ScanError, match="ECHOIMAGE_WEBHOOK_SECRET"):
            cat.scan(site.url("/page2.html"), notify=hook)
        with pytest.raises(ScanError, match="ECHOIMAGE_WEBHOOK_SECRET"):
            cat.add_watch("unsigned", site.url("/page2.html"), notify=hook)
        assert cat.watches("unsigned") == []
    settings = scan_settings(built_copy.settings, webhook_secret=SecretStr("s3cret"),
                             webhook_retries=2)
    rec.statuses = [503, 200, 400]
    with Catalogue(settings) as cat:
        shown: list[Any] = []  # as the command line prints them
        first = cat.scan(site.url("/page2.html"), notify=hook, on_finding=shown.append)
        assert len(first.new) == 2 and len(shown) == 2 and first.delivered == 1
        assert len(first.undelivered) == 1 and "HTTP 400" in first.undelivered[0].reason
        bodies = [json.loads(b) for b, _ in rec.got]
        for body, headers in rec.got:
            assert verify_signature("s3cret", body, headers[SIGNATURE_HEADER])
            assert not verify_signature("other", body, headers[SIGNATURE_HEADER])
            assert headers["Content-Type"] == "application/json"
        assert {b["event"] for b in bodies} == {"finding"}
        assert {b["catalogue"]["url"] for b in bodies} == {
            built_copy.catalogue.url("coffee"), built_copy.catalogue.url("rocket")}
        assert all(b["new"] and b["page"] == site.url("/page2.html") for b in bodies)
        n = len(rec.got)
        second = cat.scan(site.url("/page2.html"), notify=hook, on_finding=shown.append)
        assert len(second.new) == 1 and second.delivered == 1 and len(rec.got) == n + 1
        assert cat.scan(site.url("/page2.html"), notify=hook).new == []


def many_copies(site: ScanSite) -> list[str]:
    """A page of six mirrored catalogue photos among six unrelated ones, each answering
    after 0.3 s (so that a scan asking two at a time finds them one by one); returns the
    catalogue photos' names."""
    names = ["coffee", "rocket", "astronaut", "camera", "clock", "coins"]
    images = []
    for n, name in enumerate(names):
        site.image(f"/img/c{n}.jpg", jpeg(mirror(to_rgb(photo(name)))), delay=0.3)
        site.image(f"/img/o{n}.jpg", jpeg(synthetic(20 + n)), delay=0.3)
        images += [f"/img/c{n}.jpg", f"/img/o{n}.jpg"]
    site.page("/many.html", images)
    return names


def test_a_stopped_scan_does_not_report_its_findings_again(built_copy, site: ScanSite
                                                           ) -> None:
    """Ctrl-C once a scan has shown two new findings: run again, the scan reports as new
    only the findings the stopped one did not show (those it showed are seen, not new),
    and a third run has nothing new."""
    names = many_copies(site)
    settings = scan_settings(built_copy.settings, batch_size=1, http_per_host=2)
    shown: list[Any] = []

    def show(f: Any) -> None:
        shown.append(f)
        if len(shown) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C

    with Catalogue(settings) as cat:
        with pytest.raises(KeyboardInterrupt):
            cat.scan(site.url("/many.html"), on_finding=show)
        assert all(f.new for f in shown) and 2 <= len(shown) < len(names)
        again: list[Any] = []
        second = cat.scan(site.url("/many.html"), on_finding=again.append)
        assert {f.id for f in second.new} == {f.id for f in again}
        assert sorted(Path(f.catalogue_url).stem for f in shown + second.new) == sorted(names)
        assert second.seen == len(names) and len(second.new) == len(names) - len(shown)
        assert second.counts()["findings new"] == len(names) - len(shown)
        assert [s["status"] for s in cat.recent_scans()][:2] == ["ok", "interrupted"]
        third = cat.scan(site.url("/many.html"), on_finding=again.append)
        assert third.new == [] and third.seen == len(names)


# --- the command line ------------------------------------------------------------------------

def run_cli(args: list[str], settings: Settings, **env: str) -> Any:
    base = {"ECHOIMAGE_SCAN_ALLOWLIST": "127.0.0.1", "ECHOIMAGE_SCRAPE_DELAY": "0",
            "ECHOIMAGE_SCAN_IMAGE_DELAY": "0", **env}
    return CliRunner().invoke(cli, ["--data-dir", str(settings.data_dir), *args], env=base,
                              catch_exceptions=False)


def test_cli_output_and_exit_status(built_copy, site: ScanSite, tmp_path: Path) -> None:
    """Text, JSON Lines and CSV; exit status 3 with new findings, 0 without, 1 when the
    scan fails, 2 for a usage error."""
    s = built_copy.settings
    text_run = run_cli(["scan", "-q", site.url("/index.html"), "--follow-pages", "3"], s)
    assert text_run.exit_code == 3, text_run.output
    assert sum(line.startswith("NEW ") for line in text_run.output.splitlines()) == 3
    assert "partial" in text_run.output  # the rocket: a crop showing under half of it
    assert "on " + site.url("/page2.html") in text_run.output
    assert "3 new findings, 3 seen, 0 gone" in text_run.output
    again = run_cli(["scan", "-q", site.url("/index.html"), "--follow-pages", "3", "--json"], s)
    assert again.exit_code == 0, again.output
    lines = [json.loads(line) for line in again.output.splitlines()]
    assert lines == [{"summary": lines[0]["summary"]}]
    assert lines[0]["summary"]["new"] == 0 and lines[0]["summary"]["seen"] == 3
    every = run_cli(["scan", "-q", "--all", "--json", site.url("/page2.html")], s)
    rows = [json.loads(line) for line in every.output.splitlines()]
    assert every.exit_code == 0 and len(rows) == 3 and "summary" in rows[-1]
    assert {r["catalogue"]["id"] for r in rows[:2]} and not any(r["new"] for r in rows[:2])
    assert {"page", "image", "verdict", "score", "region", "transform", "first_seen",
            "last_seen"} <= set(rows[0])
    as_csv = run_cli(["scan", "-q", "--all", "--csv", site.url("/page2.html")], s)
    assert as_csv.exit_code == 0
    import csv
    import io
    table = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert len(table) == 2 and {r["page"] for r in table} == {site.url("/page2.html")}
    failed = run_cli(["scan", "-q", site.url("/nowhere.html")], s)
    assert failed.exit_code == 1 and "no target could be read" in failed.output
    assert run_cli(["scan"], s).exit_code == 2
    assert run_cli(["scan", "--watches", site.url("/x")], s).exit_code == 2
    nothing = run_cli(["scan", str(tmp_path / "no-such-folder")], s)
    assert nothing.exit_code == 1 and "unreadable" in nothing.output


def test_cli_watches(built_copy, site: ScanSite) -> None:
    """watch add / list / remove, and scan --watches running them."""
    s = built_copy.settings
    added = run_cli(["watch", "add", "shop", site.url("/index.html"), "--follow-pages", "2"], s)
    assert added.exit_code == 0 and "watch shop added" in added.output
    assert run_cli(["watch", "add", "solo", site.url("/page2.html")], s).exit_code == 0
    listed = run_cli(["watch", "list"], s)
    assert "shop: " + site.url("/index.html") + ", follows 2 pages; never scanned" \
        in listed.output
    scanned = run_cli(["scan", "-q", "--watches"], s)
    assert scanned.exit_code == 3, scanned.output
    assert "watch shop:" in scanned.output and "watch solo:" in scanned.output
    rows = [json.loads(line) for line in run_cli(["watch", "list", "--json"], s)
            .output.splitlines()]
    assert [(r["name"], r["findings"], r["last_scan"]["status"]) for r in rows] == \
        [("shop", 3, "ok"), ("solo", 2, "ok")]
    assert run_cli(["scan", "-q", "--watch", "solo"], s).exit_code == 0
    assert run_cli(["watch", "remove", "solo"], s).exit_code == 0
    gone = run_cli(["watch", "remove", "solo"], s)
    assert gone.exit_code == 1 and "no watch named solo" in gone.output
    unknown = run_cli(["scan", "--watch", "solo"], s)
    assert unknown.exit_code == 1 and "no watch named solo" in unknown.output


# --- image URLs with no extension ------------------------------------------------------------

def cdn_site(site: ScanSite) -> None:
    """Pages whose images a CDN serves at URLs with no extension: a turned copy of the
    coffee photo alone on /pages/cdn2.html; on /pages/cdn.html with unrelated photos, each
    referred to another way, and links (with no extension) to pages."""
    site.image("/cdn/img123", jpeg(rot90(to_rgb(photo("coffee")))))
    for i, path in enumerate(["/cdn/og", "/cdn/bg", "/cdn/lazy", "/cdn/pic", "/cdn/thumb7"]):
        site.image(path, jpeg(synthetic(10 + i)))
    site.page("/pages/cdn2.html", ["/cdn/img123"])
    site.routes["/pages/cdn.html"] = Route(b"""<!doctype html><html><head>
<meta property="og:image" content="/cdn/og"></head><body>
<div style="background-image: url(/cdn/bg)"></div>
<img src="/cdn/img123" alt="Turned">
<img src="/cdn/placeholder" data-src="/cdn/lazy">
<picture><source srcset="/cdn/pic?w=800 800w, /cdn/pic?w=1600 1600w"><img src="/cdn/pic?w=400">
</picture>
<a href="/product/7"><img src="/cdn/thumb7" alt="Seven"></a>
<a href="/pages/about">About us</a>
</body></html>""")
    site.page("/pages/about", [])
    site.page("/product/7", ["/cdn/thumb7"])


#: the image paths of /pages/cdn.html
CDN_IMAGES = {"/cdn/og", "/cdn/bg", "/cdn/img123", "/cdn/lazy", "/cdn/pic?w=1600",
              "/cdn/thumb7"}
#: the note of a page that shows no image (/pages/about)
NO_IMAGES = "no images found"


def test_images_with_no_extension_are_scanned(built_copy, site: ScanSite) -> None:
    """A page whose image URL has no extension (as on image CDNs) is scanned like any
    other: its turned copy of a catalogue photo is found; links with no extension are
    pages, never fetched as images, also around an <img>; a page's notes are shown."""
    cdn_site(site)
    s = built_copy.settings
    run = run_cli(["scan", "-q", site.url("/pages/cdn2.html")], s)
    assert run.exit_code == 3, run.output
    assert "1 page (ok: 1); 1 image (ok: 1); 1 new finding," in run.output
    assert f"image {site.url('/cdn/img123')}" in run.output
    assert built_copy.catalogue.url("coffee") in run.output
    start = len(site.requests)
    page = site.url("/pages/cdn.html")
    shown = run_cli(["scan", "-q", page], s)
    assert shown.exit_code == 3, shown.output  # the turned coffee on this page too
    # the turned coffee was compared on /pages/cdn2.html: unchanged
    assert f"1 page (ok: 1); {len(CDN_IMAGES)} images (ok: {len(CDN_IMAGES) - 1}, " \
        "unchanged: 1); 1 new finding," in shown.output
    assert "note:" not in shown.output, shown.output
    asked = {path for path, _, _ in site.since(start)}
    assert asked == {"/robots.txt", "/pages/cdn.html"} | {p.split("?")[0] for p in CDN_IMAGES}
    about = site.url("/pages/about")
    bare = run_cli(["scan", "-q", about], s)
    assert f"  note: {about}: {NO_IMAGES}" in bare.output.splitlines(), bare.output
    with Catalogue(scan_settings(s)) as cat:
        report = cat.scan(page, report_all=True)
        assert found(report) == {("pages/cdn.html", "cdn/img123", "coffee")}
        assert report.images == {ScanStatus.UNCHANGED: len(CDN_IMAGES)}
        assert report.notes == [] and report.as_dict()["notes"] == []  # not parsed again


def test_images_with_no_extension_are_scraped_and_built(make_settings, site: ScanSite,
                                                        tmp_path: Path) -> None:
    """`catalogue scrape` lists a CDN page's images with no extension and `index build
    PAGE_URL` indexes them, each with its pages' notes; a query finds the copy."""
    cdn_site(site)
    page = site.url("/pages/cdn.html")
    target = tmp_path / "images.json"
    about = site.url("/pages/about")
    scraped = CliRunner().invoke(cli, ["catalogue", "scrape", page, about, "-o", str(target)],
                                 env={"ECHOIMAGE_SCRAPE_DELAY": "0"}, catch_exceptions=False)
    assert scraped.exit_code == 0, scraped.output
    assert {e["url"] for e in json.loads(target.read_text())} == \
        {site.url(p) for p in CDN_IMAGES}
    assert f"note: {about}: {NO_IMAGES}" in scraped.stderr
    s = make_settings()
    built = run_cli(["index", "build", "-q", page], s, ECHOIMAGE_DATABASE_URL=s.database_url)
    assert built.exit_code == 0, built.output
    assert f"indexed: {len(CDN_IMAGES)}" in built.output
    coffee = write(tmp_path / "coffee.jpg", jpeg(to_rgb(photo("coffee"))))
    query = run_cli(["query", "--json", str(coffee)], s, ECHOIMAGE_DATABASE_URL=s.database_url)
    assert query.exit_code == 0, query.output
    top = json.loads(query.output)["results"][0]
    assert top["url"] == site.url("/cdn/img123") and top["verdict"] == "duplicate"


def _count(url: str, sql: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar() or 0)
    except Exception:  # the table does not exist yet
        return 0
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_killed_scan_resumes_without_duplicates(built_copy, site: ScanSite, sig: int) -> None:
    """kill -9 (or Ctrl-C: exit 130 and one line) once a scan has printed new findings;
    the same command run again finishes it: every finding once, those the killed run
    printed and recorded as reported not new again, the others new (none lost), the
    killed scan recorded as interrupted; a third run has nothing new."""
    names = many_copies(site)
    data_dir = built_copy.settings.data_dir
    db = store_url(data_dir)
    env = {**os.environ, "ECHOIMAGE_SCAN_ALLOWLIST": "127.0.0.1", "ECHOIMAGE_SCRAPE_DELAY": "0",
           "ECHOIMAGE_SCAN_IMAGE_DELAY": "0", "ECHOIMAGE_HTTP_PER_HOST": "2",
           "ECHOIMAGE_BATCH_SIZE": "1"}
    cmd = [sys.executable, "-m", "echoimage", "--data-dir", str(data_dir), "scan", "-q",
           "--json", site.url("/many.html")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    reported_sql = "SELECT count(*) FROM findings WHERE reported_at IS NOT NULL"
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if _count(db, reported_sql) >= 2:
                os.killpg(proc.pid, sig)
                break
            time.sleep(0.02)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    err = proc.stderr.read().decode()
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL, err[-2000:]
    else:
        assert proc.returncode == 130, (proc.returncode, err[-2000:])
        assert "Traceback" not in err and "interrupted" in err, err[-2000:]
    printed = {r["id"] for r in map(json.loads, proc.stdout.read().decode().splitlines())
               if "summary" not in r}
    engine = create_engine(db)
    with engine.connect() as conn:
        reported = set(conn.scalars(select(Finding.id).where(Finding.reported_at.is_not(None))))
    engine.dispose()
    assert 2 <= len(reported) and reported <= printed  # nothing reported unprinted
    if sig == signal.SIGINT:
        assert printed == reported
    before = _count(db, "SELECT count(*) FROM findings")
    assert 2 <= before < len(names)
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=300)
    assert again.returncode == 3, again.stderr.decode()[-2000:]
    rows = [json.loads(line) for line in again.stdout.decode().splitlines()]
    findings = [r for r in rows if "summary" not in r]
    assert all(r["new"] for r in findings)
    with Catalogue(built_copy.settings) as cat:
        every = cat.findings()[1]
        assert len(every) == len(names)
        assert sorted(Path(f.catalogue_url).stem for f in every) == sorted(names)
        statuses = [s["status"] for s in cat.recent_scans()]
        assert statuses[:2] == ["ok", "interrupted"]
    # new again: exactly what the killed run had not reported; printed by one run or both
    assert {r["id"] for r in findings} == {f.id for f in every} - reported
    assert printed | {r["id"] for r in findings} == {f.id for f in every}
    summary = rows[-1]["summary"]
    assert summary["new"] == len(names) - len(reported) and summary["seen"] == len(names)
    assert summary["images"].get("unchanged", 0) >= 1  # what the killed run had done
    engine = create_engine(db)
    with engine.connect() as conn:
        dupes = conn.execute(select(func.count()).select_from(
            select(Finding.page_id, Finding.image_id, Finding.catalogue_id)
            .group_by(Finding.page_id, Finding.image_id, Finding.catalogue_id)
            .having(func.count() > 1).subquery())).scalar()
    engine.dispose()
    assert dupes == 0
    third = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=300)
    assert third.returncode == 0, third.stderr.decode()[-2000:]


@pytest.mark.slow
def test_a_killed_csv_scan_has_written_what_it_reported(built_copy, site: ScanSite,
                                                        tmp_path: Path) -> None:
    """`scan --csv >> findings.csv` (a file: Python buffers it) killed with kill -9 once
    findings are recorded as reported: each of them is in the file (written before it was
    recorded), so none is lost to the next run."""
    many_copies(site)
    data_dir = built_copy.settings.data_dir
    db = store_url(data_dir)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env.update(ECHOIMAGE_SCAN_ALLOWLIST="127.0.0.1", ECHOIMAGE_SCRAPE_DELAY="0",
               ECHOIMAGE_SCAN_IMAGE_DELAY="0", ECHOIMAGE_HTTP_PER_HOST="2",
               ECHOIMAGE_BATCH_SIZE="1")
    cmd = [sys.executable, "-m", "echoimage", "--data-dir", str(data_dir), "scan", "-q",
           "--csv", site.url("/many.html")]
    out = tmp_path / "findings.csv"
    with open(out, "ab") as sink:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=sink,
                                stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 120
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if _count(db, "SELECT count(*) FROM findings "
                              "WHERE reported_at IS NOT NULL") >= 2:
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    engine = create_engine(db)
    with engine.connect() as conn:
        reported = set(conn.scalars(select(Finding.id).where(Finding.reported_at.is_not(None))))
    engine.dispose()
    written = {int(r["id"]) for r in csv.DictReader(io.StringIO(out.read_text()))}
    assert len(reported) >= 2 and reported <= written, (reported, written)


def test_a_store_from_before_the_scans_is_upgraded(built_copy, site: ScanSite) -> None:
    """A catalogue at schema 0007 (websites as sources, before the scans' tables) is
    upgraded by the first scan: its images kept, the copies found."""
    from sqlalchemy import inspect

    from echoimage.store.db import current_revision, downgrade, head_revision, make_engine

    settings = scan_settings(built_copy.settings)
    engine = make_engine(settings.db_url)
    try:
        images = _count(settings.db_url, "SELECT count(*) FROM images")
        downgrade(engine, "0007")
        assert current_revision(engine) == "0007"
        assert "findings" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()
    with Catalogue(settings) as cat:
        report = cat.scan(site.url("/index.html"), follow_pages=5)
    assert found(report) == EXPECTED
    assert _count(settings.db_url, "SELECT count(*) FROM images") == images
    engine = make_engine(settings.db_url)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


# --- the README's examples -----------------------------------------------------------------

def readme_scan_section() -> tuple[list[list[str]], str]:
    """The shell blocks (their lines, comments dropped) and the Python block of the
    README's "Scan the web for copies of your catalogue"."""
    import re

    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Scan the web for copies of your catalogue"):]
    section = section[:section.index("\n## ", 5)]
    shells = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        lines = [ln.split("  #")[0].strip() for ln in block.replace("\\\n", " ").splitlines()]
        shells.append([ln for ln in lines if ln and not ln.startswith("#")])
    python = re.search(r"```python\n(.*?)```", section, re.S)
    assert len(shells) == 4 and python is not None
    return shells, python.group(1)


@pytest.mark.slow
@pytest.mark.sqlite_only
def test_the_readmes_scan_examples_run_as_written(catalogue, site: ScanSite,
                                                  receiver: tuple[Receiver, str],
                                                  tmp_path: Path) -> None:
    """The scan, watch and cron lines of the README, run by bash as written (the test site
    for the example hosts, a temporary folder for ~ and /srv/echoimage, 127.0.0.1 allowed,
    no politeness delays): copies found with exit status 3, none new then; a watch's new
    finding delivered to its webhook, whose signature the README's receiver checks; the
    cron script's one line for new findings."""
    import csv
    import shutil

    (scan, watches, cron, _), python = readme_scan_section()
    rec, hook = receiver
    home, data = tmp_path / "home", tmp_path / "srv-echoimage"
    shutil.copytree(catalogue.root, home / "photos")
    site.routes["/products"] = site.routes["/"] = site.routes["/index.html"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHOIMAGE_")}
    env.update(HOME=str(home), ECHOIMAGE_DATA_DIR=str(data), ECHOIMAGE_SCRAPE_DELAY="0",
               ECHOIMAGE_SCAN_ALLOWLIST="127.0.0.1", ECHOIMAGE_SCAN_IMAGE_DELAY="0",
               ECHOIMAGE_WEBHOOK_SECRET="s3cret",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")

    def bash(line: str, status: int = 0) -> str:
        for example, here in (("https://shop.example", site.base), ("https://shop-a.example/",
                              site.url("/products")), ("https://hooks.example/echoimage", hook),
                              ("/srv/echoimage", str(data)), ("/opt/echoimage/", "")):
            line = line.replace(example, here)
        where = REPO if "scripts/" in line else tmp_path  # the scripts from the checkout
        proc = subprocess.run(["bash", "-c", line], cwd=where, env=env, capture_output=True,
                              text=True, timeout=600, stdin=subprocess.DEVNULL)
        assert proc.returncode == status, (line, proc.stdout, proc.stderr)
        return proc.stdout

    def stem(body: bytes) -> str:  # the catalogue photo a webhook's finding copies
        return Path(json.loads(body)["catalogue"]["url"]).stem

    def show_also(path: str, name: str) -> None:  # the site puts up one more copy
        site.image(path, jpeg(resize(to_rgb(photo(name)), 0.6)))
        site.page("/index.html", ["/img/coffee-mirror.jpg", "/img/other1.jpg", path],
                  ["/page2.html"])
        site.routes["/products"] = site.routes["/"] = site.routes["/index.html"]

    build, first, again = scan
    bash(build)
    out = bash(first, status=3)
    assert sum(line.startswith("NEW ") for line in out.splitlines()) >= 3
    assert first.endswith("--follow-pages 20") and "findings.csv" in again
    bash(again)
    rows = list(csv.DictReader((tmp_path / "findings.csv").open()))
    assert {Path(r["catalogue_url"]).stem for r in rows} == {"coffee", "rocket"}
    assert {r["new"] for r in rows} == {"0"}

    add, listing, scan_watches, remove = watches
    bash(add)
    assert f"shop-a: {site.url('/products')}, follows 50 pages, notifies {hook}" in bash(listing)
    show_also("/img/astronaut-small.jpg", "astronaut")
    assert "watch shop-a:" in bash(scan_watches, status=3)
    delivered = len(rec.got)  # the copy on /products, and on /index.html linked from it
    assert delivered == 2 and {stem(body) for body, _ in rec.got} == {"astronaut"}
    namespace: dict[str, Any] = {}
    exec(compile(python, "README.md", "exec"), namespace)
    body, headers = rec.got[0]
    assert namespace["from_echoimage"](body, headers[SIGNATURE_HEADER], "s3cret")
    assert not namespace["from_echoimage"](body + b" ", headers[SIGNATURE_HEADER], "s3cret")
    assert not namespace["from_echoimage"](body, headers[SIGNATURE_HEADER], "other")

    run_script, *install = cron
    assert run_script.startswith("ECHOIMAGE_DATA_DIR=/srv/echoimage scripts/scan-cron.sh")
    assert bash(run_script) == ""  # nothing new: silent
    show_also("/img/camera-small.jpg", "camera")
    said = bash(run_script)
    assert said.startswith("scan: new findings; see ") and len(said.splitlines()) == 1
    assert {stem(body) for body, _ in rec.got[delivered:]} == {"camera"}
    for word in (w for line in install for w in line.split() if w.startswith("scripts/")):
        assert (REPO / word).is_file(), word  # the units the systemd lines install
    assert "watch shop-a removed" in bash(remove)
    assert "no watches" in bash(listing)
