"""Build speed: index a folder of photos from local files and over HTTP, against the bare
decode + ORB of the same photos measured in the same run.

Serves PHOTO_DIR from a local aiohttp server on 127.0.0.1, in a process of its own (with an
ImageSpaceDB ``images.json``, strong ETags and Last-Modified, 304 on conditional requests),
then, `--repeat` times:

1. the reference: each photo decoded by Pillow to gray, scaled to the working size
   (512 px) and given to OpenCV's ORB for 1,500 keypoints, single-threaded in this process
   (OpenCV's default ORB settings, and the index's own beside it);
2. a build from local files: images/s, and the CPU seconds per image of the whole build
   (this process and its feature workers: start-up, store, index files and all), split by
   where they went;
3. a build from ``http://127.0.0.1:PORT/images.json`` (the same, over HTTP);
4. ``index update`` of the unchanged HTTP catalogue (conditional requests only);
5. a build from local files of the first half of the photos: what the whole build spent
   beyond it, over the photos of the second half, is the CPU each further image costs
   (the start-up of the processes and of the pool is paid once, whatever the catalogue's
   size), set against the reference of those photos.

Reports medians: images/s, CPU ms per image, the reference's ms per image and their ratio,
the HTTP/local ratio, the split of a build's CPU time and the cost of a further image, as
JSON and markdown.

Usage: scripts/bench_http.py PHOTO_DIR [--out DIR] [--delay-ms 0] [--repeat 3] [--limit N]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import multiprocessing
import resource
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from aiohttp import web
from PIL import Image

from echoimage.api import Catalogue
from echoimage.config import Settings
from echoimage.features.orb import ORB_PARAMS

EXTS = {".jpg", ".jpeg", ".png", ".webp"}
#: photos in the untimed warm-up builds (more than a run processes without its pool)
WARM_UP = 6
#: the order of a build's CPU split in the report
STAGES = ("read", "sha256", "decode", "thumbnail", "hashes", "orb", "colour signature",
          "encode")


def make_app(photos: list[Path], delay_s: float) -> web.Application:
    """An app serving the photos, their images.json, ETags and 304s, and /stats."""
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

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats)

    app = web.Application()
    app.router.add_get("/images.json", catalogue)
    app.router.add_get("/img/{name}", image)
    app.router.add_get("/stats", get_stats)
    return app


def _serve(photos: list[Path], delay_s: float, port_out: Any) -> None:
    """The server process: serve on 127.0.0.1 and say the port."""

    async def main() -> None:
        runner = web.AppRunner(make_app(photos, delay_s), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_out.put(runner.addresses[0][1])
        await asyncio.Event().wait()

    asyncio.run(main())


class Server:
    """The app on 127.0.0.1 in a process of its own (its CPU is not the build's)."""

    def __init__(self, photos: list[Path], delay_s: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.port = ctx.Queue()
        self.process = ctx.Process(target=_serve, args=(photos, delay_s, self.port),
                                   daemon=True)
        self.url = ""

    def __enter__(self) -> Server:
        self.process.start()
        self.url = f"http://127.0.0.1:{self.port.get(timeout=60)}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.join(10)

    def stats(self) -> dict[str, int]:
        """The server's request counts."""
        with urllib.request.urlopen(f"{self.url}/stats", timeout=10) as resp:
            return json.load(resp)


def reference_ms(blobs: list[bytes], work_size: int, nfeatures: int,
                 orb_params: dict[str, int], tail: int = 0) -> tuple[float, float, float]:
    """CPU ms per image of the bare decode + ORB: Pillow's decode to gray, scaled to the
    working size (INTER_AREA), OpenCV's ORB for nfeatures keypoints; single-threaded. With
    OpenCV's default ORB settings, and with orb_params, image by image in turn (so that a
    change in the machine's load falls on both alike); and, in the same pass, with the
    default settings over blobs[tail:] only."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    orbs = (cv2.ORB_create(nfeatures=nfeatures), cv2.ORB_create(nfeatures, **orb_params))
    spent = [0.0, 0.0]
    per_image: list[float] = []  # default settings

    def one(data: bytes, k: int) -> None:
        t0 = time.process_time()
        gray = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
        f = work_size / max(gray.shape)
        if f < 1:
            size = (max(1, round(gray.shape[1] * f)), max(1, round(gray.shape[0] * f)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        orbs[k].detectAndCompute(gray, None)
        dt = time.process_time() - t0
        spent[k] += dt
        if k == 0:
            per_image.append(dt)

    try:
        for data in blobs[:5]:  # warm up (first calls, caches)
            one(data, 0)
            one(data, 1)
        spent[:] = [0.0, 0.0]
        per_image.clear()
        for data in blobs:
            one(data, 0)
            one(data, 1)
        rest = per_image[tail:]
        return (1000 * spent[0] / len(blobs), 1000 * spent[1] / len(blobs),
                1000 * sum(rest) / max(1, len(rest)))
    finally:
        cv2.setNumThreads(threads)


def _cpu() -> tuple[float, float]:
    """CPU seconds of this process and of its ended children (the feature workers are
    joined when a run ends)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def timed_build(settings: Settings, source: str,
                then: Callable[[Catalogue], Any] | None = None) -> dict[str, Any]:
    """Build source into a new store: rate, CPU per image and its split; then(catalogue)
    runs after the build (not timed here)."""
    c0 = _cpu()
    with Catalogue(settings) as catalogue:
        s = catalogue.build(source)
        c1 = _cpu()
        extra = then(catalogue) if then else None
    n = max(1, s.processed)
    main_s, workers_s = c1[0] - c0[0], c1[1] - c0[1]
    ms = {f"worker {k}": 1000 * s.stage_cpu.get(k, 0.0) / n for k in STAGES}
    ms["worker other (start-up, task hand-over)"] = 1000 * (workers_s - s.cpu_seconds) / n
    ms["main: store writes"] = 1000 * s.store_cpu_seconds / n
    ms["main: index files"] = 1000 * s.index_cpu_seconds / n
    ms["main: other (start-up, reading the source, fetching, feeding the pool)"] = (
        1000 * (main_s - s.store_cpu_seconds - s.index_cpu_seconds) / n)
    return {
        "images": s.processed,
        "seconds": s.seconds,
        "images_per_s": s.processed / s.seconds,
        "work_seconds": s.work_seconds,
        "work_images_per_s": s.work_rate,
        "cpu_ms_per_image": 1000 * (main_s + workers_s) / n,
        "worker_task_cpu_ms_per_image": 1000 * s.cpu_seconds / n,
        "cpu_split_ms": ms,
        "net_wait_s_summed": s.net_wait_seconds,
        "counts": dict(s.counts),
        "then": extra,
    }


def further_image(whole: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """What a build of every photo spent beyond a build of the first of them, per photo
    more: the CPU of a further image, with its split (the costs paid once per build, the
    processes' start-up, cancel out)."""
    extra = whole["images"] - part["images"]
    if extra <= 0:
        raise ValueError("the part must have fewer images than the whole")

    def beyond(a: float, b: float) -> float:
        return (a * whole["images"] - b * part["images"]) / extra

    return {"images": extra,
            "cpu_ms_per_image": beyond(whole["cpu_ms_per_image"], part["cpu_ms_per_image"]),
            "cpu_split_ms": {k: beyond(v, part["cpu_split_ms"].get(k, 0.0))
                             for k, v in whole["cpu_split_ms"].items()}}


def warm_up(folder: Path, url: str) -> None:
    """Builds of a few photos from the folder and from the server at url, untimed: the
    modules a build imports on first use are then imported for every timed build alike."""
    names = sorted(p.name for p in folder.iterdir())[:WARM_UP]
    with tempfile.TemporaryDirectory(prefix="echoimage-bench-http-warm-") as tmp:
        few = Path(tmp) / "photos"
        few.mkdir()
        for name in names:
            (few / name).symlink_to((folder / name).resolve())
        urls = Path(tmp) / "urls.txt"
        urls.write_text("".join(f"{url}/img/{name}\n" for name in names))
        for data, source in (("local", few), ("http", urls)):
            with Catalogue(Settings(data_dir=Path(tmp) / data)) as catalogue:
                catalogue.build(str(source))


def run(photo_dir: Path, out: Path, delay_ms: float, repeat: int,
        limit: int | None = None) -> dict:
    """Run the reference and the three phases `repeat` times; return medians and runs."""
    photos = sorted(p for p in photo_dir.iterdir() if p.suffix.lower() in EXTS)[:limit]
    if len(photos) < 2:
        sys.exit(f"fewer than 2 photos in {photo_dir} (a further image needs a first half)")
    settings = Settings()
    blobs = [p.read_bytes() for p in photos]
    half = len(photos) // 2
    src = Path(tempfile.mkdtemp(prefix="echoimage-bench-http-src-"))
    first = Path(tempfile.mkdtemp(prefix="echoimage-bench-http-half-"))
    runs = []
    try:
        for i, p in enumerate(photos):  # the photos as their own folder (a limit takes
            (src / p.name).symlink_to(p.resolve())  # the first N), the first half too
            if i < half:
                (first / p.name).symlink_to(p.resolve())
        with Server(photos, delay_ms / 1000) as server:
            warm_up(src, server.url)
            for r in range(repeat):
                ref, ref_own, tail_ref = reference_ms(blobs, settings.work_size,
                                                      settings.orb_features, ORB_PARAMS,
                                                      tail=half)
                work = Path(tempfile.mkdtemp(prefix="echoimage-bench-http-"))
                try:
                    local = timed_build(Settings(data_dir=work / "local"), str(src))

                    def update(catalogue: Catalogue) -> dict[str, Any]:
                        before = server.stats()
                        upd = catalogue.update()
                        after = server.stats()
                        return {"images_per_s": len(photos) / upd.seconds,
                                "seconds": upd.seconds, "counts": dict(upd.counts),
                                "requests": after["requests"] - before["requests"],
                                "not_modified": after["not_modified"] - before["not_modified"]}

                    http = timed_build(Settings(data_dir=work / "http"),
                                       f"{server.url}/images.json", update)
                    part = timed_build(Settings(data_dir=work / "half"), str(first))
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                further = further_image(local, part)
                runs.append({"reference_ms": ref, "reference_own_orb_ms": ref_own,
                             "local": local, "http": http, "half": part,
                             "http_over_local": http["images_per_s"] / local["images_per_s"],
                             "local_cpu_over_reference": local["cpu_ms_per_image"] / ref,
                             "tail_reference_ms": tail_ref, "further": further,
                             "further_over_reference": further["cpu_ms_per_image"] / tail_ref})
                print(f"run {r + 1}: {json.dumps(runs[-1])}", file=sys.stderr)
    finally:
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(first, ignore_errors=True)
    report = summarise(runs, len(photos), delay_ms, repeat)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-http.json").write_text(json.dumps(report, indent=2))
    (out / "bench-http.md").write_text(report["markdown"] + "\n")
    return report


def summarise(runs: list[dict], photos: int, delay_ms: float, repeat: int) -> dict:
    """Medians over the runs (each ratio is the median of the runs' own ratios) and the
    markdown report."""

    def med(get: Callable[[dict], float]) -> float:
        return statistics.median(get(x) for x in runs)

    local = {k: med(lambda x, k=k: x["local"][k]) for k in
             ("images_per_s", "work_images_per_s", "cpu_ms_per_image",
              "worker_task_cpu_ms_per_image", "seconds")}
    http = {k: med(lambda x, k=k: x["http"][k]) for k in
            ("images_per_s", "work_images_per_s", "cpu_ms_per_image", "seconds")}
    split = {k: med(lambda x, k=k: x["local"]["cpu_split_ms"][k])
             for k in runs[0]["local"]["cpu_split_ms"]}
    further = {k: med(lambda x, k=k: x["further"]["cpu_split_ms"][k]) for k in split}
    report = {
        "photos": photos, "delay_ms": delay_ms, "repeat": repeat,
        "reference_ms": med(lambda x: x["reference_ms"]),
        "reference_own_orb_ms": med(lambda x: x["reference_own_orb_ms"]),
        "local": local, "http": http, "local_cpu_split_ms": split,
        "local_cpu_over_reference": med(lambda x: x["local_cpu_over_reference"]),
        "local_task_cpu_over_reference": med(
            lambda x: x["local"]["worker_task_cpu_ms_per_image"] / x["reference_ms"]),
        "http_cpu_over_reference": med(
            lambda x: x["http"]["cpu_ms_per_image"] / x["reference_ms"]),
        "http_over_local": med(lambda x: x["http_over_local"]),
        "tail_reference_ms": med(lambda x: x["tail_reference_ms"]),
        "further_cpu_ms_per_image": med(lambda x: x["further"]["cpu_ms_per_image"]),
        "further_over_reference": med(lambda x: x["further_over_reference"]),
        "further_cpu_split_ms": further,
        "update_images_per_s": med(lambda x: x["http"]["then"]["images_per_s"]),
        "runs": runs,
    }
    r = report
    rows = [f"| {k} | {v:.2f} | {further[k]:.2f} |" for k, v in split.items()
            if abs(v) >= 0.005 or abs(further[k]) >= 0.005]
    r["markdown"] = "\n".join([
        f"Build speed, {photos} photos (median of {repeat} runs; ratios are medians of each "
        f"run's own ratio; server delay {delay_ms:g} ms):",
        "",
        "| | images/s | CPU ms per image | × reference |",
        "|:---|---:|---:|---:|",
        f"| reference: Pillow decode + OpenCV ORB, 1 thread | {1000 / r['reference_ms']:.0f} "
        f"| {r['reference_ms']:.2f} | 1.00 |",
        f"| the same with the index's ORB settings | {1000 / r['reference_own_orb_ms']:.0f} "
        f"| {r['reference_own_orb_ms']:.2f} | "
        f"{r['reference_own_orb_ms'] / r['reference_ms']:.2f} |",
        f"| build from local files: feature work only | | "
        f"{local['worker_task_cpu_ms_per_image']:.2f} | "
        f"{r['local_task_cpu_over_reference']:.2f} |",
        f"| build from local files: whole build | {local['images_per_s']:.1f} "
        f"(processing phase {local['work_images_per_s']:.1f}) | "
        f"{local['cpu_ms_per_image']:.2f} | {r['local_cpu_over_reference']:.2f} |",
        f"| build over HTTP from 127.0.0.1 | {http['images_per_s']:.1f} "
        f"({r['http_over_local']:.0%} of local) | {http['cpu_ms_per_image']:.2f} | "
        f"{r['http_cpu_over_reference']:.2f} |",
        f"| `index update`, unchanged (304s) | {r['update_images_per_s']:.0f} | | |",
        f"| a further image (the whole local build beyond a build of its first "
        f"{photos // 2} photos) | | {r['further_cpu_ms_per_image']:.2f} | "
        f"{r['further_over_reference']:.2f} (its photos' reference "
        f"{r['tail_reference_ms']:.2f} ms) |",
        "",
        "Where a local build's CPU goes (ms per image, all processes; and per further "
        "image):",
        "",
        "| stage | ms | further image |",
        "|:---|---:|---:|",
        *rows,
    ])
    return report


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photo_dir", type=Path)
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--delay-ms", type=float, default=0.0,
                    help="Server delay per image request (simulated network latency).")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="Only the first N photos.")
    args = ap.parse_args()
    print(run(args.photo_dir, args.out, args.delay_ms, args.repeat, args.limit)["markdown"])


if __name__ == "__main__":
    main()
