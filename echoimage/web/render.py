"""HTML of the page: `string.Template` files in templates/, every value HTML-escaped here."""

from __future__ import annotations

import html
import json
from functools import cache
from pathlib import Path
from string import Template
from typing import Any

from echoimage.types import Match, Verdict
from echoimage.web.cache import CachedQuery

TEMPLATES = Path(__file__).parent / "templates"
FORMATS = "JPEG, PNG, GIF, BMP, TIFF, WebP"


@cache
def template(name: str) -> Template:
    """A template from the package's templates/ folder."""
    return Template((TEMPLATES / name).read_text(encoding="utf-8"))


def esc(value: Any) -> str:
    """HTML-escaped text of value (quotes included, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def _size(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB" if n >= 1024 * 1024 else f"{n / 1024:g} KB"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} minutes" if seconds >= 120 else f"{seconds:g} seconds"


def page(title: str, body: str, footer: str = "") -> str:
    """A whole page around body (body is HTML already)."""
    return template("page.html").substitute(
        title=esc(title), body=body,
        footer=footer or "EchoImage &middot; uploaded images are not added to the catalogue "
                         "and are forgotten after a few minutes.")


def search_page(*, indexed: int, max_k: int, k: int, max_upload_bytes: int, url: str = "",
                error: tuple[int, str] | None = None, colour_sensitive: bool = False) -> str:
    """The search form, optionally with an error message above it."""
    err = ""
    if error is not None:
        code, detail = error
        err = (f'<div class="error" role="alert"><strong>Search failed ({code}):</strong> '
               f"{esc(detail)}</div>")
    catalogue = f"The catalogue holds {indexed:,} indexed images." if indexed else (
        "The catalogue is empty: run <code>echoimage index build</code> first.")
    body = template("search.html").substitute(
        catalogue=catalogue, error=err, formats=esc(FORMATS),
        max_size=esc(_size(max_upload_bytes)), url=esc(url), max_k=max_k, k=k,
        colour_checked=" checked" if colour_sensitive else "")
    title = "EchoImage: find copies of an image"
    return page(f"Error – {title}" if error else title, body)


def message_page(heading: str, text: str) -> str:
    """A page with one message (an expired result, for instance)."""
    body = template("message.html").substitute(heading=esc(heading), text=esc(text))
    return page(f"{heading} – EchoImage", body)



#: how each verdict reads on a card
VERDICT_LABELS = {
    Verdict.EXACT: "Exact copy",
    Verdict.DUPLICATE: "Duplicate",
    Verdict.PARTIAL: "Part of this image",
    Verdict.RECOLOURED: "Recoloured copy",
    Verdict.DIFFERENT: "Not a copy",
}


def _metadata(m: Match) -> str:
    """The catalogue entry's extra keys (images.json) as a list; URLs as links."""
    if not m.metadata:
        return ""
    rows = []
    for key, value in m.metadata.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        shown = _source(text) if text.startswith(("http://", "https://")) else esc(text)
        rows.append(f"<div><dt>{esc(key)}</dt><dd>{shown}</dd></div>")
    return f'<dl class="metadata">{"".join(rows)}</dl>'


def _colour(m: Match) -> str:
    """The card's colour distance (or why there is none)."""
    if m.colour_distance is None:
        return ('<span class="muted" title="indexed before colour was kept">'
                "not known</span>")
    return f"{m.colour_distance:.2f}"


def _source(url: str) -> str:
    if url.startswith(("http://", "https://")):
        return (f'<a class="url" href="{esc(url)}" rel="noopener noreferrer nofollow">'
                f"{esc(url)}</a>")
    return f'<span class="url">{esc(url)}</span>'


def _transform(m: Match) -> str:
    t = m.transform
    if not t:
        return ""
    parts = [f"scale {t.get('scale', 0):g}&times;", f"rotation {t.get('rotation_deg', 0):g}&deg;"]
    if t.get("mirror"):
        parts.append("mirrored")
    parts.append(f"covers {100 * float(t.get('covered_fraction', 0)):.0f}%")
    return f'<div class="wide"><dt>Geometry</dt><dd>{", ".join(parts)}</dd></div>'


def card(rank: int, m: Match, token: str, threshold: float) -> str:
    """One result card."""
    if m.region is not None:
        caption = (f"Lines join the {m.orb_inliers} matched keypoints (RANSAC inliers); the "
                   "orange outline is where the query lies in the catalogue image.")
    elif m.orb_matches:
        caption = (f"{m.orb_matches} keypoint matches but no consistent geometry: SSIM and "
                   "the hash alone never make a copy.")
    else:
        caption = "No keypoint matches: SSIM and the hash alone never make a copy."
    return template("card.html").substitute(
        rank=rank, id=m.id, verdict_key=str(m.verdict), verdict=VERDICT_LABELS[m.verdict],
        metadata=_metadata(m), score=f"{m.score:.3f}", why=esc(m.why),
        threshold=f"{threshold:g}", thumb_src=f"/api/images/{m.id}/preview",
        colour_distance=_colour(m),
        source=_source(m.url), ssim=f"{m.ssim:.3f}", inliers=m.orb_inliers,
        orb_matches=m.orb_matches, hash_distance=m.hash_distance,
        orientation=esc(m.orientation), transform=_transform(m),
        match_src=f"/api/matches/{esc(token)}/{m.id}.png",
        match_alt=esc(f"The query beside catalogue image {m.id}, matched keypoints joined"),
        match_caption=esc(caption),
    )


def results_page(entry: CachedQuery, threshold: float, ttl: float) -> str:
    """The results page of a cached query."""
    matches = entry.result.matches
    ranked = list(enumerate(matches, 1))
    copies = [(i, m) for i, m in ranked if m.verdict.is_copy]
    others = [(i, m) for i, m in ranked if not m.verdict.is_copy]
    if copies:
        summary = f"{len(copies)} {'copy' if len(copies) == 1 else 'copies'} found."
    else:
        summary = "No copy found."
    listing = ""
    if copies:
        cards = "\n".join(card(i, m, entry.token, threshold) for i, m in copies)
        listing = f'<ol class="grid copies">\n{cards}\n</ol>'
    else:
        listing = ('<p class="no-copy" role="status"><strong>No copy found.</strong> No '
                   "catalogue image is a copy of this one (or of a part of it).</p>")
    if others:
        cards = "\n".join(card(i, m, entry.token, threshold) for i, m in others)
        n = len(others)
        listing += (f'\n<details class="others"><summary>{n} nearest '
                    f"{'image' if n == 1 else 'images'}, not copies</summary>\n"
                    f'<ol class="grid">\n{cards}\n</ol>\n</details>')
    img = entry.image
    total = sum(entry.result.timings.values())
    body = template("results.html").substitute(
        query_src=f"/api/queries/{esc(entry.token)}/image.png", label=esc(entry.label),
        width=img.width, height=img.height, format=esc(img.format), summary=esc(summary),
        total_ms=f"{total:.0f}", json_href=f"/api/queries/{esc(entry.token)}",
        ttl=esc(_duration(ttl)),
        matches_title="Copies in the catalogue",
        cards=listing,
    )
    return page(f"Results for {entry.label} – EchoImage", body)


def duplicates_page(result: Any, page_no: int, per_page: int, crops: bool) -> str:
    """The catalogue's groups of duplicates, a page of them, each with its thumbnails."""
    groups = result.groups
    pages = max(1, -(-len(groups) // per_page))
    shown = groups[(page_no - 1) * per_page: page_no * per_page]
    parts = [f"<h1>Duplicates in the catalogue</h1><p>{len(groups):,} groups, "
             f"{result.duplicates:,} images that copy another, of {result.images:,} indexed "
             f"images{' (parts of images included)' if crops else ''}. The keeper of each "
             "group has the most pixels of content (inside any border), then was indexed "
             "first.</p>"]
    if not groups:
        parts.append("<p>No duplicates found.</p>")
    for g in shown:
        items = []
        for m in g.members:
            if m.keep:
                note = "keep"
            else:
                ln = m.link
                note = (f"score {ln.score:.3f} &middot; hash {ln.hash_distance} &middot; "
                        f"ssim {ln.ssim:.3f} &middot; orb {ln.orb_inliers} &middot; "
                        f"{esc(ln.orientation)} &middot; via {esc(ln.via)}")
            items.append(
                f'<li class="member{" keep" if m.keep else ""}" data-id="{m.id}">'
                f'<div class="thumb"><img src="/api/images/{m.id}/preview" '
                f'alt="Catalogue image {m.id}" loading="lazy"></div>'
                f'<p class="source">#{m.id} {_source(m.url)} ({m.width}&times;{m.height})</p>'
                f'<p class="muted">{note}</p></li>')
        parts.append(f'<section class="group" aria-labelledby="g{g.number}">'
                     f'<h2 id="g{g.number}">Group {g.number} ({len(g.members)} images)</h2>'
                     f'<ol class="members">{"".join(items)}</ol></section>')
    nav = []
    flag = "&amp;crops=true" if crops else ""
    if page_no > 1:
        nav.append(f'<a href="/duplicates?page={page_no - 1}{flag}">Previous</a>')
    nav.append(f"page {page_no} of {pages}")
    if page_no < pages:
        nav.append(f'<a href="/duplicates?page={page_no + 1}{flag}">Next</a>')
    parts.append(f'<nav class="pages" aria-label="Pages">{" ".join(nav)}</nav>')
    return page("Duplicates – EchoImage", "".join(parts))


def computing_page(done: int, total: int | None) -> str:
    """The duplicates page while they are being worked out (it reloads itself)."""
    of = f" of {total:,}" if total else ""
    return message_page("Finding duplicates…", f"{done:,}{of} images looked at so far. This "
                        "page reloads itself every few seconds.")
