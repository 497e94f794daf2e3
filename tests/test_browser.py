"""A real browser on the page: Playwright drives Debian's Chromium against a uvicorn server.

`make test` installs `chromium` with apt-get when it is missing. Without it the tests skip,
except under CI=true, where they fail. The results page's screenshot is kept as
test-artifacts/results.png.
"""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from conftest import Built
from helpers import jpeg, photo, resize, rotate, to_rgb, write

from echoimage.web.app import create_app
from echoimage.web.config import WebSettings

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(built: Built) -> Iterator[str]:
    """`echoimage serve`'s app on a free 127.0.0.1 port, in a thread."""
    port = free_port()
    app = create_app(built.settings, WebSettings())
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            access_log=False)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


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
    """Wait until every image on the page has loaded (polled from Python: the page's CSP
    forbids the eval that page.wait_for_function would use)."""
    deadline = time.monotonic() + seconds
    script = "() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
    while not page.evaluate(script):  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            raise AssertionError("images did not load")
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
    assert cards.nth(1).get_attribute("data-verdict") == "similar"
    wait_for_images(page)
    size = first.locator(".match-view img").evaluate("i => [i.naturalWidth, i.naturalHeight]")
    assert size[0] > size[1] > 100  # the side-by-side match view loaded
    page.screenshot(path=str(ARTIFACTS / "results.png"), full_page=True)
    assert problems == []
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
