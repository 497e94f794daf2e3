"""The scan benchmark: a website of copies and unrelated photos on 127.0.0.1, scanned
against a catalogue padded to a large scale.

`run_scan_benchmark(photo_dir, out_dir, ...)`, behind `scripts/bench_scan.py` (`make
bench-scan`):

1. **catalogue**: the photos are split as the other benchmarks split them (a seeded 20%
   held out); the catalogue photos are indexed, and the store is padded with derived rows
   (`derived.add_derived_rows`) to `scale` entries and its index rebuilt (or an existing
   padded data directory is reused: `data_dir`, whatever split made it, such as the load
   benchmark's: its photos are the catalogue, the rest are held out).
2. **the site**: `copies` images are edited copies of catalogue photos (each a different
   photo, edits taken in turn from the main transforms of `transforms` and the hard edits
   of `hard`), the rest (`images - copies`) are held-out photos under the main
   transforms (each photo under several, each image different). Every image is a JPEG
   with a random name; they are shuffled over `pages` pages that show them in the ways
   pages do (`<img src>`, lazy `data-src`, `<picture>`/`srcset`, CSS backgrounds), linked
   from an index page. An aiohttp server in a process of its own serves the site on
   127.0.0.1 with ETag and Last-Modified (304s).
3. **the engine alone** (the baseline, in the same process, with the same threads as the
   scan): every site image's bytes, read from disk, through `SearchEngine.query_bytes`
   for its copies only, as the scan asks (images/s); then **the scan** of the index page
   with `--follow-pages` reaching every page (images/s; findings recall and precision
   against the truth); then **a re-scan** of the unchanged site (seconds, against the
   first scan's). The politeness delays are 0 for this local site (`scrape_delay`,
   `scan_image_delay`).

Writes scan.json and scan.md to out_dir.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from echoimage_bench.context import (
    Log,
    list_photos,
    machine_info,
    read_bgr,
    split_photos,
    stored_photos,
)
from echoimage_bench.formatting import fmt_rate, jsonable, markdown_table
from echoimage_bench.hard import HARD_EDITS, make_hard_query
from echoimage_bench.transforms import TRANSFORMS, make_query, transform_rng

SCAN_VERSION = 1


# --- the site ------------------------------------------------------------------------------

def _edits() -> list[tuple[str, str]]:
    """The copies' edits in turn: (kind, name), main transforms and hard edits alternating."""
    main = [("main", name) for name in TRANSFORMS]
    hard = [("hard", name) for name in HARD_EDITS]
    out = []
    for i in range(max(len(main), len(hard))):
        out += [main[i % len(main)], hard[i % len(hard)]]
    return out


def _page_html(n: int, names: Sequence[str], rng: np.random.Generator) -> str:
    """A page showing images in the ways pages do."""
    parts = [f"<!doctype html><html><head><title>Page {n}</title></head><body>",
             f"<h1>Page {n}</h1>"]
    for name in names:
        src = f"/img/{name}"
        style = int(rng.integers(5))
        if style == 0:
            parts.append(f'<img src="{src}" alt="photo">')
        elif style == 1:
            parts.append(f'<img src="/static/placeholder.gif" data-src="{src}" class="lazy">')
        elif style == 2:
            parts.append(f'<picture><source srcset="{src} 1200w"><img src="{src}"></picture>')
        elif style == 3:
            parts.append(f'<div class="hero" style="background-image: url(\'{src}\')"></div>')
        else:
            parts.append(f'<a href="{src}"><img src="{src}" alt="full size"></a>')
    parts.append('<p><a href="/index.html">home</a></p></body></html>')
    return "\n".join(parts)


def make_site(site: Path, catalogue: list[Path], held: list[Path], *, images: int,
              pages: int, copies: int, seed: int, log: Log,
              urls: dict[str, str] | None = None) -> dict[str, Any]:
    """Write the site (see the module); returns its truth: for each image path, the
    catalogue photo it copies (its store URL: urls by file name, else its resolved path)
    or None, and its edit."""
    if copies > len(catalogue):
        raise ValueError(f"{copies} copies need as many catalogue photos ({len(catalogue)})")
    if images < copies or pages < 1:
        raise ValueError("images must be at least copies, and pages at least 1")
    shutil.rmtree(site, ignore_errors=True)
    (site / "img").mkdir(parents=True)
    (site / "static").mkdir()
    rng = np.random.default_rng([seed, 0x5CA9])
    pool = [img for p in held if (img := read_bgr(p)) is not None]
    picked = sorted(rng.choice(len(catalogue), size=copies, replace=False).tolist())
    edits = _edits()
    truth: dict[str, dict[str, Any]] = {}
    tick = log.loop("writing the site's images", images)

    def put(data: bytes, entry: dict[str, Any]) -> None:
        name = f"{rng.integers(1 << 62):016x}.jpg"
        (site / "img" / name).write_bytes(data)
        truth[f"/img/{name}"] = entry
        tick(len(truth))

    for j, i in enumerate(picked):
        kind, name = edits[j % len(edits)]
        img = read_bgr(catalogue[i])
        erng = transform_rng(seed, i, f"scan-{name}")
        data = make_query(img, TRANSFORMS[name], erng) if kind == "main" else \
            make_hard_query(img, HARD_EDITS[name], erng, pool)
        url = (urls or {}).get(catalogue[i].name) or str(catalogue[i].resolve())
        put(data, {"truth": url, "kind": kind, "edit": name})
    whole = list(TRANSFORMS)
    for j in range(images - copies):
        h = j % len(held)
        v = j // len(held)
        name = whole[(v + 7 * h) % len(whole)]
        img = read_bgr(held[h])
        put(make_query(img, TRANSFORMS[name], transform_rng(seed, 2_000_000 + h, name
                                                            + f"-{v}")),
            {"truth": None, "kind": "held-out", "edit": name})
    order = list(truth)
    rng.shuffle(order)
    per = -(-len(order) // pages)
    links = []
    for n in range(pages):
        names = [p.rsplit("/", 1)[1] for p in order[n * per:(n + 1) * per]]
        (site / f"p{n:03d}.html").write_text(_page_html(n, names, rng))
        links.append(f'<li><a href="/p{n:03d}.html">page {n}</a></li>')
    (site / "index.html").write_text("<!doctype html><html><body><h1>Gallery</h1><ul>"
                                     + "".join(links) + "</ul></body></html>")
    (site / "static" / "placeholder.gif").write_bytes(
        bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000"
                      "010001000002024401003b"))
    return truth


def _serve(site: str, port: int) -> None:
    """Serve site on 127.0.0.1:port (the server process's body)."""
    from aiohttp import web

    app = web.Application()

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(Path(site) / "index.html")

    app.router.add_get("/", index)
    app.router.add_static("/", site, show_index=False)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SiteServer:
    """The site served by aiohttp in a process of its own, on a free port of 127.0.0.1."""

    def __init__(self, site: Path) -> None:
        self.site = site
        self.port = _free_port()
        self.process: multiprocessing.process.BaseProcess | None = None

    @property
    def url(self) -> str:
        """The site's root URL."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> SiteServer:
        ctx = multiprocessing.get_context("spawn")
        self.process = ctx.Process(target=_serve, args=(str(self.site), self.port),
                                   daemon=True)
        self.process.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the site server did not start")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.join(10)


# --- the catalogue ---------------------------------------------------------------------------

def prepare_catalogue(settings: Any, catalogue: list[Path], out_dir: Path, scale: int,
                      seed: int, log: Log) -> dict[str, Any]:
    """Index the catalogue photos into settings' fresh store, pad it with derived rows to
    scale entries and rebuild its index; returns the times."""
    from echoimage.api import Catalogue
    from echoimage.store.db import open_store
    from echoimage_bench.derived import add_derived_rows

    shutil.rmtree(settings.data_dir, ignore_errors=True)
    listing = out_dir / "scan-catalogue.txt"
    listing.write_text("".join(f"{p}\n" for p in catalogue))
    t0 = time.perf_counter()
    with Catalogue(settings) as cat:
        summary = cat.build(str(listing))
    indexed = int(summary.counts.get("indexed", 0))
    build_s = time.perf_counter() - t0
    log(f"catalogue: {indexed} photos indexed in {build_s:.0f}s")
    pad_s = rebuild_s = 0.0
    if scale > indexed:
        store = open_store(settings)
        try:
            tick = log.loop(f"padding to {scale:,}", scale - indexed)
            pad_s = add_derived_rows(store, indexed, scale - indexed, seed=seed,
                                     progress=tick, workers=os.cpu_count() or 1)
        finally:
            store.dispose()
        log(f"padded in {pad_s:.0f}s; rebuilding the index")
        t1 = time.perf_counter()
        with Catalogue(settings) as cat:
            cat.rebuild("the scan benchmark padded the store")
        rebuild_s = time.perf_counter() - t1
        log(f"index rebuilt in {rebuild_s:.0f}s")
    return {"indexed": indexed, "build_s": round(build_s, 1), "padding_s": round(pad_s, 1),
            "rebuild_s": round(rebuild_s, 1)}


# --- measuring -------------------------------------------------------------------------------

def engine_rate(engine: Any, blobs: list[bytes], threads: int, k: int
                ) -> tuple[float, list[Any]]:
    """The engine alone on blobs, with threads threads: (seconds, each blob's copies: the
    catalogue URLs it was found a copy of, or the error's text)."""
    def one(data: bytes) -> Any:
        try:
            # for copies only, as the scan asks
            return [m.url for m in engine.query_bytes(data, k, copies_only=True).copies]
        except Exception as exc:  # a decode error is an answer too
            return f"{type(exc).__name__}: {exc}"

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        answers = list(pool.map(one, blobs))
    return time.perf_counter() - t0, answers


def score_findings(truth: dict[str, dict[str, Any]], found: dict[str, set[str]]
                   ) -> dict[str, Any]:
    """Recall (copies found as copies of their own catalogue photo), precision (findings
    that are right), by kind of copy; found: image path → catalogue URLs found."""
    right = wrong = 0
    false: list[dict[str, Any]] = []
    by_kind: dict[str, list[bool]] = {}
    missed = []
    for path, t in truth.items():
        urls = found.get(path, set())
        if t["truth"] is not None:
            hit = t["truth"] in urls
            by_kind.setdefault(t["kind"], []).append(hit)
            by_kind.setdefault(f"{t['kind']}:{t['edit']}", []).append(hit)
            if not hit:
                missed.append({"image": path, **t})
        for u in urls:
            if u == t["truth"]:
                right += 1
            else:
                wrong += 1
                false.append({"image": path, "found": u, **t})
    copies = sum(1 for t in truth.values() if t["truth"] is not None)
    found_copies = sum(1 for path, t in truth.items()
                       if t["truth"] is not None and t["truth"] in found.get(path, set()))
    return {"copies": copies, "found": found_copies,
            "recall": found_copies / copies if copies else None,
            "findings": right + wrong, "right": right, "wrong": wrong,
            "precision": right / (right + wrong) if right + wrong else None,
            "recall_by_kind": {k: round(sum(v) / len(v), 3) for k, v in sorted(by_kind.items())
                               if ":" not in k},
            "recall_by_edit": {k.split(":", 1)[1]: [sum(v), len(v)]
                               for k, v in sorted(by_kind.items()) if ":" in k},
            "missed": missed, "false": false}


def run_scan_benchmark(photo_dir: str | Path, out_dir: str | Path, *, images: int = 2000,
                       pages: int = 100, copies: int = 200, scale: int = 100_000,
                       seed: int = 0, data_dir: str | Path | None = None,
                       threads: int | None = None, keep: bool = False, progress: bool = True,
                       engine_images: int | None = None,
                       command: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the scan benchmark (see the module); results also in out_dir/scan.json and
    scan.md. data_dir: an existing data directory holding catalogue photos (padded
    already; of any split: its photos are the catalogue, the rest held out), used as it
    is; else one is made in out_dir/scan-data (removed at the end unless keep).
    engine_images: the engine alone answers a seeded sample of this many of the site's
    images in each of its two runs (default: all of them)."""
    from echoimage.api import Catalogue
    from echoimage.config import Settings

    log = Log(progress, "bench scan")
    started = datetime.now(UTC)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = list_photos(Path(photo_dir))
    urls: dict[str, str] = {}
    if data_dir is not None:  # the catalogue's own photos, whatever split made it
        urls = {name: url for name, (_, url) in stored_photos(Path(data_dir)).items()}
        catalogue = [p for p in files if p.name in urls]
        held = [p for p in files if p.name not in urls]
        if not catalogue:
            raise ValueError(f"{data_dir} holds none of the photos of {photo_dir}")
    else:
        catalogue, held = split_photos(files, seed, 0.2)
    threads = threads or os.cpu_count() or 1
    data = Path(data_dir) if data_dir else out_dir / "scan-data"
    settings = Settings(data_dir=data, database_url=None, scan_threads=threads,
                        scrape_delay=0.0, scan_image_delay=0.0,
                        scan_allowlist=["127.0.0.1"])
    prepared: dict[str, Any] = {"reused": str(data.resolve())}
    if data_dir is None:
        prepared = prepare_catalogue(settings, catalogue, out_dir, scale, seed, log)
    else:
        for name in ("echoimage.sqlite3",):  # a scan of an earlier run starts afresh
            if not (data / name).exists():
                raise ValueError(f"{data} holds no catalogue")
    site = out_dir / "scan-site"
    truth = make_site(site, catalogue, held, images=images, pages=pages, copies=copies,
                      seed=seed, log=log, urls=urls)
    blobs = [(site / p.lstrip("/")).read_bytes() for p in truth]
    sample = sorted(np.random.default_rng([seed, 0xE9]).choice(
        len(blobs), size=min(engine_images or len(blobs), len(blobs)), replace=False).tolist())
    engine_paths = [list(truth)[i] for i in sample]
    engine_blobs = [blobs[i] for i in sample]
    log(f"site: {len(truth)} images ({copies} copies) over {pages} pages, "
        f"{sum(map(len, blobs)) / len(blobs) / 1024:.0f} KB each on average")
    result: dict[str, Any] = {
        "version": SCAN_VERSION, "date": started.isoformat(timespec="seconds"),
        "command": list(command) if command is not None else list(sys.argv),
        "machine": machine_info(),
        "params": {"photo_dir": str(Path(photo_dir).resolve()), "images": images,
                   "pages": pages, "copies": copies, "scale": scale, "seed": seed,
                   "threads": threads, "engine_images": len(engine_blobs)},
        "catalogue": prepared}
    try:
        with SiteServer(site) as server, Catalogue(settings) as cat:
            _clear_scans(cat)
            engine = cat.search_engine
            result["entries"] = engine.size
            log(f"catalogue of {engine.size:,} entries; warming up")
            engine_rate(engine, blobs[:8], threads, settings.default_k)
            log(f"the engine alone: {len(engine_blobs)} images, {threads} threads")
            base_s, answers = engine_rate(engine, engine_blobs, threads, settings.default_k)
            log(f"the engine alone: {len(engine_blobs) / base_s:.2f} images/s")
            found_engine = {p: set(a) for p, a in zip(engine_paths, answers, strict=True)
                            if isinstance(a, list)}
            log("the scan")
            first = cat.scan(f"{server.url}/index.html", follow_pages=pages)
            log(f"the scan: {first.seconds:.1f}s, {len(first.findings)} findings")
            log("the re-scan of the unchanged site")
            again = cat.scan(f"{server.url}/index.html", follow_pages=pages)
            log(f"the re-scan: {again.seconds:.1f}s")
            base2_s, _ = engine_rate(engine, engine_blobs, threads, settings.default_k)
            log(f"the engine alone again: {len(engine_blobs) / base2_s:.2f} images/s")
    finally:
        if data_dir is None and not keep:
            shutil.rmtree(data, ignore_errors=True)
    prefix = len(server.url)
    found: dict[str, set[str]] = {}
    for f in first.findings:
        found.setdefault(f.image[prefix:], set()).add(f.catalogue_url)
    engine_s = float(np.median([base_s, base2_s]))
    scan_rate = first.compared / first.seconds if first.seconds else 0.0
    result.update({
        "engine": {"seconds": [round(base_s, 2), round(base2_s, 2)],
                   "images_per_s": round(len(engine_blobs) / engine_s, 3),
                   **{k: v for k, v in score_findings({p: truth[p] for p in engine_paths},
                                                      found_engine).items()
                      if k in ("recall", "precision", "wrong", "found")}},
        "scan": {"seconds": round(first.seconds, 2), "compared": first.compared,
                 "images_per_s": round(scan_rate, 3),
                 "pages": dict(first.pages), "images": dict(first.images),
                 "failures": [f.to_dict() for f in first.failures[:20]],
                 "compare_seconds": round(first.compare_seconds, 2),
                 **score_findings(truth, found)},
        "rescan": {"seconds": round(again.seconds, 2), "compared": again.compared,
                   "pages": dict(again.pages), "images": dict(again.images),
                   "new_findings": len(again.new), "seen": again.seen},
    })
    result["targets"] = {
        "recall": result["scan"]["recall"],
        "precision": result["scan"]["precision"],
        "rescan_fraction": round(again.seconds / first.seconds, 4) if first.seconds else None,
        "throughput_ratio": round(scan_rate / (len(engine_blobs) / engine_s), 3)}
    result = jsonable(result)
    (out_dir / "scan.json").write_text(json.dumps(result, indent=2))
    (out_dir / "scan.md").write_text(render_scan_markdown(result))
    log(f"done: {out_dir / 'scan.md'}")
    return result


def _clear_scans(cat: Any) -> None:
    """Forget earlier scans of a reused store (their findings would make this one's
    re-scan of what they saw)."""
    from echoimage.store.db import session_factory
    from echoimage.store.models import Finding, ScanImage, ScanMatch, ScanPage, ScanRun

    with session_factory(cat.open_store(create=True)).begin() as session:
        for table in (Finding, ScanMatch, ScanImage, ScanPage, ScanRun):
            session.query(table).delete()


def render_scan_markdown(result: dict[str, Any]) -> str:
    """The table of a scan benchmark result (BENCHMARKS.md, "Scanning a site for copies")."""
    t, s, e, r = result["targets"], result["scan"], result["engine"], result["rescan"]
    p = result["params"]
    rows = [
        ["findings recall (copies found as their photo's)",
         f"{t['recall']:.3f} ({s['found']}/{s['copies']})", "≥ 0.97"],
        ["findings precision", f"{t['precision']:.4f} ({s['wrong']} wrong of "
                               f"{s['findings']})", "≥ 0.997"],
        ["re-scan of the unchanged site / first scan",
         f"{t['rescan_fraction']:.3f} ({r['seconds']:.1f} s / {s['seconds']:.1f} s)", "≤ 0.10"],
        ["scan throughput / engine alone (same images, same threads)",
         f"{t['throughput_ratio']:.2f} ({s['images_per_s']:.2f} / {e['images_per_s']:.2f} "
         "images/s)", "≥ 0.8"],
        [f"engine alone ({p.get('engine_images', p['images']):,} of the images): recall / "
         "precision", f"{fmt_rate(e['recall'])} / {fmt_rate(e['precision'], 4)}", ""],
    ]
    head = (f"{p['images']:,} images over {p['pages']} pages ({p['copies']} copies), "
            f"{result.get('entries', 0):,} catalogue entries, {p['threads']} threads")
    out = [head, "", markdown_table(["measure", "result", "target"], rows), ""]
    out.append("recall by kind: " + ", ".join(f"{k} {v:.3f}"
                                              for k, v in s["recall_by_kind"].items()))
    misses = [f"{k} {n - h}/{n}" for k, (h, n) in s["recall_by_edit"].items() if h < n]
    out.append("missed by edit: " + (", ".join(misses) or "none"))
    if s["false"]:
        out.append("wrong findings: " + "; ".join(
            f"{f['kind']} {f['edit']} → {f['found']}" for f in s["false"][:10]))
    return "\n".join(out) + "\n"
