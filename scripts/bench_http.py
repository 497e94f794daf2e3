"""HTTP mode of the benchmark: index a folder of photos served over HTTP, then re-index it.

Serves PHOTO_DIR from a local aiohttp server on 127.0.0.1 (with an ImageSpaceDB
``images.json``, strong ETags and Last-Modified, 304 on conditional requests), then in one
process and on the same photos:

1. builds from local files (the baseline),
2. builds from ``http://127.0.0.1:PORT/images.json``,
3. runs ``index update`` on the unchanged HTTP catalogue (conditional requests only).

Reports images/s for each, the HTTP build's split between CPU (feature workers) and network
wait, and the ratio of the HTTP build rate to the local one, as JSON and markdown.

Usage: scripts/bench_http.py PHOTO_DIR [--out DIR] [--delay-ms 0] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from email.utils import formatdate
from pathlib import Path

from aiohttp import web

from echoimage.api import Catalogue
from echoimage.config import Settings

EXTS = {".jpg", ".jpeg", ".png", ".webp"}


def make_app(photos: list[Path], delay_s: float) -> web.Application:
    """An app serving the photos, their images.json, ETags and 304s."""
    blobs = {p.name: p.read_bytes() for p in photos}
    etags = {n: '"' + hashlib.sha256(b).hexdigest()[:32] + '"' for n, b in blobs.items()}
    modified = formatdate(time.time() - 3600, usegmt=True)
    stats = {"requests": 0, "not_modified": 0}

    async def catalogue(request: web.Request) -> web.Response:
        base = f"{request.scheme}://{request.host}"
        doc = [{"url": f"{base}/img/{n}", "title": n} for n in sorted(blobs)]
        return web.json_response(doc)

    async def image(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        stats["requests"] += 1
        if name not in blobs:
            raise web.HTTPNotFound()
        if delay_s:
            await asyncio.sleep(delay_s)
        headers = {"ETag": etags[name], "Last-Modified": modified}
        if request.headers.get("If-None-Match") == etags[name]:
            stats["not_modified"] += 1
            return web.Response(status=304, headers=headers)
        return web.Response(body=blobs[name], content_type="image/jpeg", headers=headers)

    app = web.Application()
    app["stats"] = stats
    app.router.add_get("/images.json", catalogue)
    app.router.add_get("/img/{name}", image)
    return app


class Server:
    """The app on 127.0.0.1 in a background thread with its own event loop."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.url = ""

    def __enter__(self) -> Server:
        self.thread.start()
        runner = web.AppRunner(self.app, access_log=None)
        asyncio.run_coroutine_threadsafe(runner.setup(), self.loop).result()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        asyncio.run_coroutine_threadsafe(site.start(), self.loop).result()
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self.runner = runner
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def run(photo_dir: Path, out: Path, delay_ms: float, repeat: int) -> dict:
    """Run the three phases `repeat` times and return medians and every run."""
    photos = sorted(p for p in photo_dir.iterdir() if p.suffix.lower() in EXTS)
    if not photos:
        sys.exit(f"no photos in {photo_dir}")
    runs = []
    with Server(make_app(photos, delay_ms / 1000)) as server:
        for r in range(repeat):
            work = Path(tempfile.mkdtemp(prefix="echoimage-bench-http-"))
            try:
                with Catalogue(Settings(data_dir=work / "local")) as catalogue:
                    local = catalogue.build(str(photo_dir))
                with Catalogue(Settings(data_dir=work / "http")) as catalogue:
                    http = catalogue.build(f"{server.url}/images.json")
                    before = dict(server.app["stats"])
                    upd = catalogue.update()
                    after = dict(server.app["stats"])
            finally:
                shutil.rmtree(work, ignore_errors=True)
            runs.append({
                "local_images_per_s": local.processed / local.seconds,
                "http_images_per_s": http.processed / http.seconds,
                "http_seconds": http.seconds,
                "http_worker_cpu_s": http.cpu_seconds,
                "http_net_wait_s_summed": http.net_wait_seconds,
                "http_counts": dict(http.counts),
                "update_images_per_s": len(photos) / upd.seconds,
                "update_seconds": upd.seconds,
                "update_counts": dict(upd.counts),
                "update_requests": after["requests"] - before["requests"],
                "update_304": after["not_modified"] - before["not_modified"],
            })
            print(f"run {r + 1}: {json.dumps(runs[-1])}", file=sys.stderr)

    def med(key: str) -> float:
        return statistics.median(x[key] for x in runs)

    report = {
        "photos": len(photos), "delay_ms": delay_ms, "repeat": repeat,
        "local_images_per_s": med("local_images_per_s"),
        "http_images_per_s": med("http_images_per_s"),
        "http_over_local": med("http_images_per_s") / med("local_images_per_s"),
        "http_worker_cpu_s": med("http_worker_cpu_s"),
        "http_seconds": med("http_seconds"),
        "update_images_per_s": med("update_images_per_s"),
        "runs": runs,
    }
    cpu_share = report["http_worker_cpu_s"] / (2 * report["http_seconds"])
    report["markdown"] = "\n".join([
        f"HTTP indexing of {len(photos)} photos from 127.0.0.1 (median of {repeat} runs, "
        f"server delay {delay_ms:g} ms):",
        "",
        "| phase | images/s |",
        "|:---|---:|",
        f"| build from local files (baseline) | {report['local_images_per_s']:.0f} |",
        f"| build over HTTP | {report['http_images_per_s']:.0f} "
        f"({report['http_over_local']:.0%} of local) |",
        f"| update, unchanged (304s, no feature work) | {report['update_images_per_s']:.0f} |",
        "",
        f"HTTP build: {report['http_seconds']:.1f} s wall, {report['http_worker_cpu_s']:.1f} s "
        f"of feature-worker CPU ({cpu_share:.0%} of 2 cores); the rest is fetching, "
        "store writes and the index rebuild.",
    ])
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-http.json").write_text(json.dumps(report, indent=2))
    (out / "bench-http.md").write_text(report["markdown"] + "\n")
    return report


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photo_dir", type=Path)
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--delay-ms", type=float, default=0.0,
                    help="Server delay per image request (simulated network latency).")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(run(args.photo_dir, args.out, args.delay_ms, args.repeat)["markdown"])


if __name__ == "__main__":
    main()
