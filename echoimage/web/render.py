"""HTML of the page: `string.Template` files in templates/, every value HTML-escaped here."""

from __future__ import annotations

import html
import json
from functools import cache
from pathlib import Path
from string import Template
from typing import Any

from echoimage.types import Match, Verdict, counted
from echoimage.web.cache import CachedQuery

TEMPLATES = Path(__file__).parent / "templates"
FORMATS = "JPEG, PNG, GIF, BMP, TIFF, WebP, HEIC, AVIF"


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


def search_page(*, indexed: int | None, max_k: int, k: int, max_upload_bytes: int, url: str = "",
                error: tuple[int, str] | None = None, colour_sensitive: bool = False,
                copies_only: bool = False) -> str:
    """The search form, optionally with an error message above it."""
    err = ""
    if error is not None:
        code, detail = error
        err = (f'<div class="error" role="alert"><strong>Search failed ({code}):</strong> '
               f"{esc(detail)}</div>")
    if indexed is None:
        catalogue = "The catalogue's index is loading: searches are taken once it is loaded."
    elif indexed:
        catalogue = f"The catalogue holds {indexed:,} indexed images."
    else:
        catalogue = "The catalogue is empty: run <code>echoimage index build</code> first."
    body = template("search.html").substitute(
        catalogue=catalogue, error=err, formats=esc(FORMATS),
        max_size=esc(_size(max_upload_bytes)), max_bytes=max_upload_bytes, url=esc(url),
        max_k=max_k, k=k,
        colour_checked=" checked" if colour_sensitive else "",
        copies_checked=" checked" if copies_only else "")
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


def _also_at(m: Match) -> str:
    """The other catalogue entries with the same file, as a list (nothing when none)."""
    if not m.also_at:
        return ""
    items = "".join(f"<li>{_source(url)}</li>" for url in m.also_at)
    return f'<div class="also-at">The same file also at:<ul>{items}</ul></div>'


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


#: what a result without geometric agreement cannot be made a copy by
_NO_PROOF = "SSIM never makes a copy, a near hash only of a small, crushed or noisy query."


def card(rank: int, m: Match, token: str, threshold: float) -> str:
    """One result card."""
    if m.region is not None:
        caption = (f"Lines join the {m.orb_inliers} matched keypoints (RANSAC inliers); the "
                   "orange outline is where the query lies in the catalogue image.")
    elif m.orb_matches:
        caption = f"{m.orb_matches} keypoint matches but no consistent geometry: {_NO_PROOF}"
    else:
        caption = f"No keypoint matches: {_NO_PROOF}"
    return template("card.html").substitute(
        rank=rank, id=m.id, verdict_key=str(m.verdict), verdict=VERDICT_LABELS[m.verdict],
        metadata=_metadata(m), also_at=_also_at(m), score=f"{m.score:.3f}", why=esc(m.why),
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
        summary = f"{counted(len(copies), 'copy', 'copies')} found."
    else:
        summary = "No copy found."
    listing = ""
    if copies:
        cards = "\n".join(card(i, m, entry.token, threshold) for i, m in copies)
        listing = f'<ol class="grid copies">\n{cards}\n</ol>'
    else:
        # under "Copies in the catalogue" (the query's caption says "No copy found.")
        listing = ('<p class="no-copy" role="status"><strong>None:</strong> no catalogue '
                   "image is a copy of this one (or of a part of it).</p>")
    if others:
        cards = "\n".join(card(i, m, entry.token, threshold) for i, m in others)
        listing += (f'\n<details class="others"><summary>{counted(len(others), "nearest image")}, '
                    "not copies</summary>\n"
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
    """The catalogue's groups of duplicates, a page of them, each with its thumbnails (a
    page number out of range shows the nearest page)."""
    groups = result.groups
    pages = max(1, -(-len(groups) // per_page))
    page_no = min(max(1, page_no), pages)
    shown = groups[(page_no - 1) * per_page: page_no * per_page]
    parts = [f"<h1>Duplicates in the catalogue</h1><p>{len(groups):,} groups, "
             f"{result.duplicates:,} images that copy another, of {result.images:,} indexed "
             f"images{' (parts of images included)' if crops else ''}. The keeper of each "
             "group has the most pixels of content (inside any border), then the least "
             "border, the most pixels, the largest file (the better encoded), and was "
             "indexed first.</p>"]
    if not groups:
        parts.append("<p>No duplicates found.</p>")
    for g in shown:
        items = []
        for m in g.members:
            if m.keep:
                note = "keep"
            else:
                ln = m.link
                sim = "-" if ln.ssim != ln.ssim else f"{ln.ssim:.3f}"  # NaN: not computed
                note = (f"score {ln.score:.3f} by {esc(ln.proof)} &middot; hash "
                        f"{ln.hash_distance} &middot; ssim {sim} &middot; orb "
                        f"{ln.orb_inliers} &middot; {esc(ln.orientation)} &middot; via "
                        f"{esc(ln.via)}")
            items.append(
                f'<li class="member{" keep" if m.keep else ""}" data-id="{m.id}">'
                f'<div class="thumb"><img src="/api/images/{m.id}/preview" '
                f'alt="Catalogue image {m.id}" loading="lazy"></div>'
                f'<p class="source">#{m.id} {_source(m.url)} ({m.width}&times;{m.height})</p>'
                f'<p class="muted">{note}</p></li>')
        parts.append(f'<section class="group" aria-labelledby="g{g.number}">'
                     f'<h2 id="g{g.number}">Group {g.number} ({len(g.members)} images)</h2>'
                     f'<ol class="members">{"".join(items)}</ol></section>')
    parts.append(pager("/duplicates", page_no, pages, "&amp;crops=true" if crops else ""))
    return page("Duplicates – EchoImage", "".join(parts))


def pager(path: str, page_no: int, pages: int, query: str = "") -> str:
    """The Previous / page n of m / Next links of a paged page (query: its other
    parameters, HTML-escaped, each after an &amp;)."""
    nav = []
    if page_no > 1:
        nav.append(f'<a href="{path}?page={page_no - 1}{query}">Previous</a>')
    nav.append(f"page {page_no} of {pages}")
    if page_no < pages:
        nav.append(f'<a href="{path}?page={page_no + 1}{query}">Next</a>')
    return f'<nav class="pages" aria-label="Pages">{" ".join(nav)}</nav>'


def computing_page(done: int, total: int | None) -> str:
    """The duplicates page while they are being worked out (it reloads itself)."""
    of = f" of {total:,}" if total else ""
    return message_page("Finding duplicates…", f"{done:,}{of} images looked at so far. This "
                        "page reloads itself every few seconds.")


def _time(t: Any) -> str:
    """A time as a <time> element (UTC)."""
    return (f'<time datetime="{esc(t.isoformat())}">'
            f'{esc(t.strftime("%Y-%m-%d %H:%M UTC"))}</time>')


def _finding(f: Any) -> str:
    """One finding: the match picture, verdict and score, the page and the image, when."""
    try:
        label = VERDICT_LABELS[Verdict(f.verdict)]
    except ValueError:
        label = f.verdict
    gone = (f'<p class="gone">Gone {_time(f.gone_at)}: {esc(f.gone_reason or "")}</p>'
            if f.gone_at is not None else "")
    new = '<span class="badge new">New</span> ' if f.new else ""
    src = f"/api/findings/{f.id}/match.png"
    return (f'<li class="finding{" is-gone" if f.gone_at else ""}" data-id="{f.id}" '
            f'data-verdict="{esc(f.verdict)}">'
            f'<figure class="match-view"><a href="{src}"><img src="{src}" loading="lazy" '
            f'alt="{esc(f"The image found on {f.page} beside catalogue image {f.catalogue_id}")}">'
            f"</a></figure>"
            f'<p>{new}<span class="badge {esc(f.verdict)}">{esc(label)}</span> '
            f'<span class="score-value">{f.score:.3f}</span></p>'
            f'<p class="source">on {_source(f.page)}</p>'
            f'<p class="source muted">image {_source(f.image)}</p>'
            f'<p class="muted">first seen {_time(f.first_seen)}, last seen '
            f"{_time(f.last_seen)}</p>{gone}</li>")


def findings_page(groups: list[Any], total: int, page_no: int, per_page: int,
                  watch: str | None, catalogue_image: int | None, gone: bool,
                  watches: list[str]) -> str:
    """What scans found: a page of catalogue images (the one found newest first), each
    with its findings."""
    pages = max(1, -(-total // per_page))
    options = "".join(f'<option value="{esc(w)}"{" selected" if w == watch else ""}>'
                      f"{esc(w)}</option>" for w in watches)
    form = ('<form class="filters" method="get" action="/findings">'
            '<label for="watch">Watch</label> <select id="watch" name="watch">'
            f'<option value="">all</option>{options}</select> '
            f'<label class="check"><input type="checkbox" name="gone" value="true"'
            f'{" checked" if gone else ""}> include findings that are gone</label> '
            '<button type="submit">Show</button></form>')
    parts = ["<h1>Findings</h1>",
             '<p class="lead">Copies of the catalogue\'s images that scans found on other '
             "pages (<code>echoimage scan</code>, <code>echoimage scan --watches</code>), "
             "the catalogue image found most recently first.</p>", form,
             f'<p class="summary">{total:,} catalogue '
             f"{'image has' if total == 1 else 'images have'} findings"
             + (f" on the pages of watch {esc(watch)}" if watch else "") + ".</p>"]
    if not groups:
        parts.append('<p class="no-copy" role="status">No findings yet.</p>')
    for g in groups:
        more = ""
        if g.total > len(g.findings) and catalogue_image is None:
            more = (f'<p><a href="/findings?catalogue_image={g.catalogue_id}'
                    f'{"&amp;gone=true" if gone else ""}">All {g.total} findings of this '
                    "image</a></p>")
        meta = ", ".join(f"{esc(k)}: {esc(v)}" for k, v in g.metadata.items())
        parts.append(
            f'<section class="finding-group" data-catalogue-id="{g.catalogue_id}" '
            f'aria-labelledby="c{g.catalogue_id}">'
            f'<header class="finding-head"><div class="thumb"><img '
            f'src="/api/images/{g.catalogue_id}/preview" loading="lazy" '
            f'alt="Catalogue image {g.catalogue_id}"></div><div>'
            f'<h2 id="c{g.catalogue_id}">#{g.catalogue_id} {_source(g.catalogue_url)}</h2>'
            + (f'<p class="muted">{meta}</p>' if meta else "")
            + f"<p>{g.total} finding{'s' if g.total != 1 else ''}</p></div></header>"
            f'<ol class="findings">{"".join(_finding(f) for f in g.findings)}</ol>'
            f"{more}</section>")
    query = "".join(f"&amp;{k}={esc(v)}" for k, v in (("watch", watch),
                                                       ("catalogue_image", catalogue_image),
                                                       ("gone", "true" if gone else None))
                    if v)
    parts.append(pager("/findings", page_no, pages, query))
    return page("Findings – EchoImage", "".join(parts))
