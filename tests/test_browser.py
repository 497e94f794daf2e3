"""A real browser on the page: Playwright drives Debian's Chromium against a uvicorn server.

`make test` installs `chromium` with apt-get when it is missing. Without it the tests skip,
except under CI=true, where they fail. The results page's screenshot is kept as
test-artifacts/results.png.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import Built
from helpers import (
    build_index,
    jpeg,
    photo,
    png,
    resize,
    rotate,
    serving,
    synthetic,
    to_rgb,
    write,
)

from echoimage.config import Settings

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("no_network")]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def require_chromium() -> None:
    """Skip (fail under CI=true) when Debian's Chromium is not installed."""
    if Path(CHROMIUM).exists():
        return
    msg = f"{CHROMIUM} is missing: apt-get install chromium (`make test` does it)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def server(built: Built) -> Iterator[str]:
    """The server on the built catalogue."""
    with serving(built.settings) as url:
        yield url


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server on a small shop catalogue: an images.json whose entries carry a sku, a
    title and a product page."""
    root = tmp_path_factory.mktemp("shop")
    entries = []
    for n, name in enumerate(("coffee", "rocket", "astronaut")):
        write(root / f"{name}.jpg", jpeg(to_rgb(photo(name))))
        entries.append({"url": f"{name}.jpg", "sku": f"SKU-{100 + n}",
                        "title": f"The {name} print",
                        "page": f"https://shop.example/products/{name}"})
    (root / "images.json").write_text(json.dumps(entries))
    settings = Settings(data_dir=root / "data", workers=1)
    # in a thread: Playwright's sync API keeps an event loop running in this one
    with ThreadPoolExecutor(1) as pool:
        pool.submit(build_index, settings, [str(root / "images.json")], progress=False).result()
    with serving(settings) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def query_file(tmp_path: Path, name: str = "coffee") -> Path:
    """A transformed copy of a catalogue photo: 70%, turned 4 degrees, JPEG q80."""
    return write(tmp_path / f"copy-of-{name}.jpg",
                 jpeg(rotate(resize(to_rgb(photo(name)), 0.7), 4), 80))


def wait_for_images(page: object, seconds: float = 20) -> None:
    """Wait until every image shown on the page has loaded (polled from Python: the page's
    CSP forbids the eval that page.wait_for_function would use); images folded away (not
    laid out) do not load until shown."""
    deadline = time.monotonic() + seconds
    script = ("() => Array.from(document.images).every(i => !i.checkVisibility()"
              " || (i.complete && i.naturalWidth > 0))")
    while not page.evaluate(script):  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            missing = page.evaluate(  # type: ignore[attr-defined]
                "() => Array.from(document.images).filter(i => i.checkVisibility()"
                " && !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
            raise AssertionError(f"images did not load: {missing}")
        time.sleep(0.05)


def test_upload_shows_the_original_first(server: str, browser: object, built: Built,
                                         tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    problems: list[str] = []  # console errors: CSP violations, failed loads, script errors
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(server + "/")
    assert page.title().startswith("EchoImage")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "search.png"))
    page.set_input_files("#file", str(query_file(tmp_path)))
    assert "copy-of-coffee.jpg" in page.locator("[data-file-status]").inner_text()
    page.click("button[type=submit]")
    page.wait_for_url("**/results/*")

    cards = page.locator("li.card")
    assert cards.count() == 5
    first = cards.first
    assert first.get_attribute("data-rank") == "1"
    assert first.locator(".source").inner_text().strip() == built.catalogue.url("coffee")
    assert first.locator(".badge").inner_text().strip().lower() == "duplicate"
    assert first.get_attribute("data-verdict") == "duplicate"
    assert page.locator(".summary").inner_text().strip() == "1 copy found."
    # the four that are not copies are folded away until asked for
    others = page.locator("details.others")
    assert "4 nearest images, not copies" in others.locator("summary").inner_text()
    assert first.is_visible() and not cards.nth(1).is_visible()
    wait_for_images(page)
    size = first.locator(".match-view img").evaluate("i => [i.naturalWidth, i.naturalHeight]")
    assert size[0] > size[1] > 100  # the side-by-side match view loaded
    shot = page.screenshot(path=str(ARTIFACTS / "results.png"), full_page=True)
    folded_height = image_size(shot)[1]
    others.locator("summary").click()
    assert cards.nth(1).is_visible()
    assert cards.nth(1).get_attribute("data-verdict") == "different"
    assert cards.nth(1).locator(".badge").inner_text().strip().lower() == "not a copy"
    opened = page.screenshot(path=str(ARTIFACTS / "results-unfolded.png"), full_page=True)
    assert image_size(opened)[1] > folded_height + 300  # the folded cards now take room
    assert problems == []
    page.close()


def image_size(png_bytes: bytes) -> tuple[int, int]:
    """Width and height of a screenshot."""
    from PIL import Image

    with Image.open(io.BytesIO(png_bytes)) as im:
        return im.size


def test_a_file_over_the_upload_limit_is_refused_before_it_is_sent(
        server: str, browser: object, tmp_path: Path) -> None:
    """A file over the server's upload limit is said too large as soon as it is chosen,
    and the form is not sent (before, the whole file went up for a 413)."""
    big = tmp_path / "huge.png"
    with open(big, "wb") as f:
        f.truncate(21 * 1024 * 1024)  # over the default 20 MB
    page = browser.new_page()  # type: ignore[attr-defined]
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if r.method == "POST" else None)
    page.goto(server + "/")
    assert "HEIC, AVIF" in page.locator(".drop-hint").inner_text()
    page.set_input_files("#file", str(big))
    status = page.locator("[data-file-status]")
    assert status.inner_text() == ("huge.png is 21 MB: the limit is 20 MB. Choose a smaller "
                                   "file.")
    page.click("button[type=submit]")
    page.wait_for_timeout(300)
    assert sent == [] and page.url.rstrip("/") == server.rstrip("/")
    page.close()


def test_no_copy_found(server: str, browser: object, tmp_path: Path) -> None:
    """An image the catalogue has no copy of: the page says so plainly, and the nearest
    images are folded away, each called "not a copy"."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page.goto(server + "/")
    page.set_input_files("#file", str(write(tmp_path / "unrelated.png", png(synthetic(7)))))
    page.click("button[type=submit]")
    page.wait_for_url("**/results/*")
    note = page.locator(".no-copy")
    assert note.is_visible() and note.inner_text().startswith("None: no catalogue image is a copy")
    assert page.locator(".summary").inner_text().strip() == "No copy found."
    cards = page.locator("li.card")
    assert cards.count() == 5
    assert all(not cards.nth(i).is_visible() for i in range(5))
    section = page.locator("section.matches")
    folded = section.bounding_box()
    shot = section.screenshot(path=str(ARTIFACTS / "no-copy.png"))
    assert folded is not None and image_size(shot)[1] < 200  # the note and one line
    page.locator("details.others summary").click()
    opened = section.bounding_box()
    assert opened is not None and opened["height"] > folded["height"] + 300
    verdicts = {cards.nth(i).get_attribute("data-verdict") for i in range(5)}
    assert verdicts == {"different"}
    page.close()


def test_copies_only_checkbox(server: str, browser: object, built: Built,
                              tmp_path: Path) -> None:
    """"Copies only" on the form: an image with no copy gets the plain note and no cards
    (no nearest images folded away); a copy gets its one card; the box stays as it was
    set when the form comes back with an error."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]

    def search(path: Path) -> None:
        page.goto(server + "/")
        page.set_input_files("#file", str(path))
        box = page.locator("#copies_only")
        assert box.is_visible() and not box.is_checked()
        box.check()
        page.click("button[type=submit]")

    search(write(tmp_path / "unrelated.png", png(synthetic(7))))
    page.wait_for_url("**/results/*")
    assert page.locator(".summary").inner_text().strip() == "No copy found."
    assert page.locator(".no-copy").is_visible()
    assert page.locator("li.card").count() == 0
    assert page.locator("details.others").count() == 0
    search(write(tmp_path / "copy.jpg", jpeg(to_rgb(photo("coffee"))[30:, 20:], 85)))
    page.wait_for_url("**/results/*")
    cards = page.locator("li.card")
    assert cards.count() == 1 and cards.first.is_visible()
    assert cards.first.locator(".source").inner_text().strip() == built.catalogue.url("coffee")
    search(write(tmp_path / "empty.jpg", b""))  # refused: the form again, the box kept
    assert page.locator(".error").is_visible()
    assert page.locator("#copies_only").is_checked()
    page.close()


def test_cards_show_catalogue_metadata(shop: str, browser: object, tmp_path: Path) -> None:
    """The images.json entry's extra keys are on the result card; a URL among them and the
    image's own http URL are links."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page.goto(shop + "/")
    page.set_input_files("#file", str(query_file(tmp_path, "rocket")))
    page.click("button[type=submit]")
    page.wait_for_url("**/results/*")
    first = page.locator("li.card").first
    meta = first.locator("dl.metadata")
    assert meta.is_visible()
    terms = [t.strip() for t in meta.locator("dt").all_inner_texts()]
    values = [v.strip() for v in meta.locator("dd").all_inner_texts()]
    assert dict(zip(terms, values, strict=True)) == {
        "sku": "SKU-101", "title": "The rocket print",
        "page": "https://shop.example/products/rocket"}
    link = meta.locator("a")
    assert link.get_attribute("href") == "https://shop.example/products/rocket"
    box, card_box = meta.bounding_box(), first.bounding_box()
    assert box is not None and card_box is not None
    assert card_box["y"] < box["y"] < card_box["y"] + card_box["height"]  # inside the card
    shot = first.screenshot(path=str(ARTIFACTS / "card-metadata.png"))
    assert image_size(shot)[0] > 200
    page.close()


def test_drag_and_drop(server: str, browser: object, built: Built) -> None:
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(server + "/")
    data = jpeg(resize(to_rgb(photo("rocket")), 0.5), 85)
    transfer = page.evaluate_handle(
        """(b64) => {
            const bin = atob(b64);
            const bytes = new Uint8Array(bin.length);
            for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "dropped.jpg", {type: "image/jpeg"}));
            return dt;
        }""", base64.b64encode(data).decode())
    page.dispatch_event("[data-drop]", "drop", {"dataTransfer": transfer})
    assert "dropped.jpg" in page.locator("[data-file-status]").inner_text()
    page.click("button[type=submit]")
    page.wait_for_url("**/results/*")
    first = page.locator("li.card").first
    assert first.locator(".source").inner_text().strip() == built.catalogue.url("rocket")
    page.close()


def test_works_without_javascript(server: str, browser: object, built: Built,
                                  tmp_path: Path) -> None:
    context = browser.new_context(java_script_enabled=False)  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(server + "/")
    page.set_input_files("#file", str(query_file(tmp_path, "camera")))
    page.fill("#k", "2")
    page.click("button[type=submit]")
    page.wait_for_url("**/results/*")
    cards = page.locator("li.card")
    assert cards.count() == 2
    assert cards.first.locator(".source").inner_text().strip() == built.catalogue.url("camera")
    # an error is shown on the page, with the form
    page.goto(server + "/")
    page.set_input_files("#file", str(write(tmp_path / "notes.jpg", b"plain text " * 30)))
    page.click("button[type=submit]")
    assert "not an image" in page.locator("[role=alert]").inner_text()
    context.close()


def _offline_page(browser: object, server: str) -> tuple[object, list[str], list[str]]:
    """A page whose requests to anywhere but the server are aborted (and listed), with its
    console errors."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    blocked: list[str] = []
    problems: list[str] = []

    def route(r: object) -> None:
        url = r.request.url  # type: ignore[attr-defined]
        if url.startswith(server + "/") or url.startswith("data:") or url.startswith("blob:"):
            r.continue_()  # type: ignore[attr-defined]
        else:
            blocked.append(url)
            r.abort()  # type: ignore[attr-defined]

    page.route("**/*", route)
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    return page, blocked, problems


def test_api_docs_render_offline(server: str, browser: object) -> None:
    """/docs draws Swagger UI with every request leaving 127.0.0.1 blocked."""
    page, blocked, problems = _offline_page(browser, server)
    page.goto(server + "/docs")  # type: ignore[attr-defined]
    op = page.locator("#operations-search-search_api_search_post")  # type: ignore[attr-defined]
    op.wait_for(state="visible", timeout=20_000)
    assert op.locator(".opblock-summary-method").inner_text().strip() == "POST"
    assert op.locator(".opblock-summary-path").inner_text().strip() == "/api/search"
    assert page.locator(".swagger-ui .info .title").inner_text().startswith(  # type: ignore[attr-defined]
        "EchoImage")
    # Swagger UI's stylesheet is applied: the POST badge has its green background
    colour = op.locator(".opblock-summary-method").evaluate(
        "e => getComputedStyle(e).backgroundColor")
    assert colour == "rgb(73, 204, 144)", colour
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "api-docs.png"
    page.screenshot(path=str(shot))  # type: ignore[attr-defined]
    assert shot.stat().st_size > 20_000  # a drawn page, not a blank one
    assert blocked == [] and problems == [], (blocked, problems)
    page.close()  # type: ignore[attr-defined]


REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def test_redoc_renders_offline(server: str, browser: object) -> None:
    page, blocked, problems = _offline_page(browser, server)
    page.goto(server + "/redoc")  # type: ignore[attr-defined]
    heading = page.locator("h2", has_text="Search")  # type: ignore[attr-defined]
    heading.first.wait_for(state="visible", timeout=20_000)
    assert page.locator("h1").first.inner_text().startswith("EchoImage")  # type: ignore[attr-defined]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "redoc.png"))  # type: ignore[attr-defined]
    # the one request ReDoc makes elsewhere is its attribution logo, which it hides when
    # the logo cannot be loaded
    assert set(blocked) <= {REDOC_LOGO}, blocked
    assert [p for p in problems if "net::ERR_FAILED" not in p] == [], problems
    page.close()  # type: ignore[attr-defined]


def _pixels(png: bytes) -> object:
    import cv2
    import numpy as np

    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).astype(int)


def _saturation(png: bytes) -> float:
    """Mean spread between the strongest and weakest channel of a screenshot's pixels (0 for
    a gray picture)."""
    img = _pixels(png)
    return float((img.max(axis=2) - img.min(axis=2)).mean())  # type: ignore[attr-defined]


def _colour_search(page: object, server: str, path: Path, sensitive: bool) -> object:
    page.goto(server + "/")  # type: ignore[attr-defined]
    page.set_input_files("#file", str(path))  # type: ignore[attr-defined]
    box = page.locator("#colour_sensitive")  # type: ignore[attr-defined]
    if sensitive:
        box.check()
    assert box.is_checked() is sensitive
    page.click("button[type=submit]")  # type: ignore[attr-defined]
    page.wait_for_url("**/results/*")  # type: ignore[attr-defined]
    wait_for_images(page)
    return page.locator("li.card").first  # type: ignore[attr-defined]


def test_colour_sensitive_checkbox_and_colour_pictures(server: str, browser: object,
                                                       built: Built, tmp_path: Path) -> None:
    """A hue-turned copy of a colour photo: the cards show catalogue images in colour, the
    colour distance is shown, and the verdict is `duplicate` without the checkbox and
    `recoloured` with it (read from the page and checked in a screenshot)."""
    import cv2
    import numpy as np

    hsv = cv2.cvtColor(photo("astronaut"), cv2.COLOR_RGB2HSV_FULL)
    hsv[..., 0] = ((hsv[..., 0].astype(int) + 85) % 256).astype(np.uint8)
    path = write(tmp_path / "astronaut-recoloured.jpg",
                 jpeg(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL), 90))
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    badges, badge_colour = {}, {}
    ARTIFACTS.mkdir(exist_ok=True)
    for sensitive in (False, True):
        first = _colour_search(page, server, path, sensitive)
        assert first.locator(".source").inner_text().strip() == \
            built.catalogue.url("astronaut")
        assert float(first.locator(".colour-distance").inner_text()) > 0.5
        badges[sensitive] = first.locator(".badge").inner_text().strip().lower()
        shot = page.screenshot(path=str(ARTIFACTS / f"colour-{sensitive}.png"))
        # the catalogue image of the card, as the screenshot shows it: in colour
        thumb = first.locator(".thumb img")
        assert "/preview" in (thumb.get_attribute("src") or "")
        assert _saturation(thumb.screenshot()) > 25
        # the query picture at the top, in colour too
        assert _saturation(page.locator(".query-figure img").screenshot()) > 25
        # the badge as the screenshot shows it: its mean colour (BGR)
        badge_colour[sensitive] = _pixels(first.locator(".badge").screenshot()).reshape(
            -1, 3).mean(axis=0)  # type: ignore[attr-defined]
        assert _saturation(shot) > 3  # the whole page is not gray either
    assert badges == {False: "duplicate", True: "recoloured copy"}
    # the verdict's change shows in the pixels: the duplicate badge is green, the
    # recoloured one purple (more red than green)
    dup, rec = badge_colour[False], badge_colour[True]
    assert dup[1] > dup[2] and rec[2] > rec[1]
    assert abs(dup - rec).sum() > 30
    page.close()


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The server on a small catalogue that a scan of a local site found copies of: a
    mirrored coffee on two pages (one of them a watch's) and a cropped rocket."""
    from aiohttp import web
    from helpers import ServerThread, crop, mirror

    from echoimage.api import Catalogue

    root = tmp_path_factory.mktemp("scanned")
    for name in ("coffee", "rocket", "astronaut"):
        write(root / "catalogue" / f"{name}.jpg", jpeg(to_rgb(photo(name))))
    images = {"/img/coffee.jpg": jpeg(mirror(to_rgb(photo("coffee")))),
              "/img/rocket.jpg": jpeg(crop(to_rgb(photo("rocket")), 0.8)),
              "/img/other.jpg": jpeg(synthetic(11))}
    pages = {"/a.html": ["/img/coffee.jpg", "/img/other.jpg"],
             "/b.html": ["/img/rocket.jpg", "/img/coffee.jpg"]}

    async def handle(request: web.Request) -> web.Response:
        if request.path in pages:
            body = "".join(f'<img src="{i}">' for i in pages[request.path])
            return web.Response(text=f"<html><body>{body}</body></html>",
                                content_type="text/html")
        if request.path in images:
            return web.Response(body=images[request.path], content_type="image/jpeg")
        raise web.HTTPNotFound()

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    site = ServerThread(app)
    base = site.start()
    settings = Settings(data_dir=root / "data", workers=1, scan_allowlist=["127.0.0.1"],
                        scrape_delay=0.0, scan_image_delay=0.0)

    def scan() -> None:
        build_index(settings, [str(root / "catalogue")])
        with Catalogue(settings) as cat:
            cat.add_watch("shop-b", f"{base}/b.html")
            cat.scan_watches()
            cat.scan(f"{base}/a.html")

    try:
        with ThreadPoolExecutor(1) as pool:  # Playwright's sync API runs a loop here
            pool.submit(scan).result()
    finally:
        site.stop()
    with serving(settings) as url:
        yield url, base


def test_findings_page(scanned: tuple[str, str], browser: object) -> None:
    """The findings page: a group per catalogue image (the one found newest first), each
    finding with its match picture, its page link and when it was first and last seen;
    the watch filter narrows it to the watch's pages."""
    server, site = scanned
    page = browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    try:
        page.goto(f"{server}/")
        page.get_by_role("link", name="Findings").click()
        page.wait_for_url(f"{server}/findings")
        assert page.get_by_role("heading", name="Findings", level=1).is_visible()
        groups = page.locator("section.finding-group")
        assert groups.count() == 2
        heads = [groups.nth(i).locator("h2").inner_text() for i in range(2)]
        assert heads[0].endswith("coffee.jpg") and heads[1].endswith("rocket.jpg")
        coffee = groups.nth(0).locator("li.finding")
        assert coffee.count() == 2
        wait_for_images(page)
        for img in page.locator("li.finding img").all():
            width = img.evaluate("i => i.naturalWidth")
            height = img.evaluate("i => i.naturalHeight")
            assert width > height > 0  # the found image beside the catalogue image
        pages_linked = {a.get_attribute("href") for a in
                        page.locator("li.finding p.source:not(.muted) a").all()}
        assert pages_linked == {f"{site}/a.html", f"{site}/b.html"}
        assert "first seen" in coffee.first.inner_text()
        assert coffee.first.locator("time").count() == 2
        page.select_option("select#watch", "shop-b")
        page.get_by_role("button", name="Show").click()
        page.wait_for_url("**/findings?watch=shop-b**")
        assert page.locator("li.finding").count() == 2
        assert {a.get_attribute("href") for a in
                page.locator("li.finding p.source:not(.muted) a").all()} == {f"{site}/b.html"}
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "findings.png"), full_page=True)
    finally:
        page.close()
