"""Load benchmark of `echoimage serve`: N concurrent clients posting images to a real server.

Builds (or reuses) a catalogue of --entries images in --data-dir: real photos (BSDS500 when
available, else scikit-image's) padded with procedurally generated synthetic images, indexes
it with `build_index`, starts the server on 127.0.0.1 (or uses --url), then for each client
count posts transformed copies of the real photos (every request a different image: resized,
rotated, cropped, mirrored, re-compressed) and reports queries/s, latency percentiles, errors
and whether the original came first. Nothing is cached across requests by the server other
than its index; the queries differ anyway.

Example:

    .venv/bin/python scripts/loadtest.py --entries 10000 --clients 1,4,16 --queries 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = ROOT.parent / "shared" / "datasets" / "bsds500"
SKIMAGE_PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "brick", "coins",
                  "moon", "page", "clock", "grass", "hubble_deep_field")


# --- catalogue ------------------------------------------------------------------------------

def synthetic_image(seed: int) -> np.ndarray:
    """A seeded procedural BGR image in one of five sizes (the project's one generator)."""
    from echoimage_bench.synthetic import synthetic_image as make

    h, w = [(240, 320), (320, 240), (300, 300), (270, 480), (360, 480)][seed % 5]
    return make(seed, seed=7, size=(w, h), colour=True)


def real_photos(photos: Path | None, limit: int, out: Path) -> list[Path]:
    """Copy up to limit real photos into out (reused when already there)."""
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(out.glob("*.jpg"))
    if len(existing) >= limit:
        return existing[:limit]
    if photos is not None and photos.is_dir():
        for src in sorted(photos.glob("*.jpg"))[:limit]:
            dst = out / src.name
            if not dst.exists():
                dst.write_bytes(src.read_bytes())
    else:
        import skimage.data

        for name in SKIMAGE_PHOTOS[:limit]:
            arr = getattr(skimage.data, name)()
            if arr.dtype == bool:
                arr = arr.astype(np.uint8) * 255
            arr = arr[..., :3] if arr.ndim == 3 else cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
            cv2.imwrite(str(out / f"{name}.jpg"), cv2.cvtColor(arr, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 92])
    return sorted(out.glob("*.jpg"))[:limit]


def synthetic_set(count: int, out: Path) -> list[Path]:
    """Write count synthetic images into out (only the missing ones); their paths."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    made = 0
    paths = []
    for i in range(count):
        path = out / f"syn-{i:06d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        cv2.imwrite(str(path), synthetic_image(i), [cv2.IMWRITE_JPEG_QUALITY, 88])
        made += 1
    if made:
        print(f"wrote {made} synthetic images in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
    return paths


def indexed_count(settings: object) -> int:
    """Images indexed in the store of settings (0 when there is no store yet)."""
    from echoimage.store import repo
    from echoimage.store.db import open_store, session_factory

    if not (settings.data_dir / "echoimage.sqlite3").exists():  # type: ignore[attr-defined]
        return 0
    with session_factory(open_store(settings))() as session:  # type: ignore[arg-type]
        return repo.store_state(session).count


def ensure_catalogue(data_dir: Path, images_dir: Path, entries: int, photos: Path | None,
                     real: int, recent: int, gap: float = 11.0) -> list[Path]:
    """Index a catalogue of `entries` images in data_dir; returns its real photos.

    The images are cached in images_dir. The last `recent` images are added by a second
    build, `gap` seconds after the first, as a catalogue that grows over time is; with
    recent=0 the whole catalogue comes from one build.
    """
    from echoimage.api import Catalogue
    from echoimage.config import Settings

    reals = real_photos(photos, min(real, entries), images_dir / "real")
    syn = synthetic_set(max(0, entries - len(reals)), images_dir / "synthetic")
    paths = [str(p.resolve()) for p in reals + syn]
    cut = len(paths) - min(recent, len(syn))
    settings = Settings(data_dir=data_dir)
    if indexed_count(settings) == len(paths):
        print(f"catalogue of {len(paths)} images already indexed in {data_dir}", file=sys.stderr)
        return reals
    for batch, (lo, hi) in enumerate(((0, cut), (cut, len(paths))), 1):
        if lo == hi:
            continue
        listing = data_dir / f"batch{batch}.txt"
        data_dir.mkdir(parents=True, exist_ok=True)
        listing.write_text("\n".join(paths[lo:hi]) + "\n")
        t0 = time.perf_counter()
        with Catalogue(settings) as catalogue:
            summary = catalogue.build(str(listing), progress=sys.stderr.isatty())
        print(f"index batch {batch}: {dict(summary.counts)} in {time.perf_counter() - t0:.1f} s;"
              f" {summary.index_entries} entries", file=sys.stderr)
        if batch == 1 and summary.counts.get("indexed") and cut < len(paths):
            time.sleep(gap)
    return reals


# --- queries ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Query:
    """One query: JPEG bytes of a transformed copy and the catalogue path it came from."""

    data: bytes
    expected: str
    transform: str


def make_query(path: Path, i: int) -> Query:
    """A transformed copy of a real photo; the transform varies with i."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    rng = np.random.default_rng(1000 + i)
    kind = i % 5
    h, w = img.shape[:2]
    if kind == 0:
        f = rng.uniform(0.5, 0.9)
        img = cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
        name = f"resize {f:.2f}"
    elif kind == 1:
        a = rng.uniform(-6, 6)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), a, 1.0)
        img = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
        name = f"rotate {a:.1f}"
    elif kind == 2:
        f = rng.uniform(0.75, 0.92)
        dh, dw = int(h * (1 - f) / 2), int(w * (1 - f) / 2)
        img = img[dh:h - dh, dw:w - dw]
        name = f"crop {f:.2f}"
    elif kind == 3:
        img = np.ascontiguousarray(img[:, ::-1])
        name = "mirror"
    else:
        img = np.clip(img.astype(np.float32) * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20),
                      0, 255).astype(np.uint8)
        name = "brightness"
    q = int(rng.integers(60, 92))
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
    assert ok
    return Query(buf.tobytes(), str(path.resolve()), f"{name}, q{q}")


# --- load ------------------------------------------------------------------------------------

@dataclass
class Level:
    """What one client count measured."""

    clients: int
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    correct: int = 0
    seconds: float = 0.0
    server_cpu: float | None = None
    client_cpu: float = 0.0
    server_ms: list[float] = field(default_factory=list)

    @property
    def done(self) -> int:
        return len(self.latencies)

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        return float(np.percentile(np.array(self.latencies) * 1000, p))


async def post(session: aiohttp.ClientSession, url: str, q: Query, k: int
               ) -> tuple[int, dict | str]:
    form = aiohttp.FormData()
    form.add_field("file", q.data, filename="query.jpg", content_type="image/jpeg")
    form.add_field("k", str(k))
    async with session.post(f"{url}/api/search", data=form) as resp:
        body = await resp.read()
        if resp.status != 200:
            return resp.status, body.decode("utf-8", "replace")[:200]
        return resp.status, json.loads(body)


async def run_level(url: str, clients: int, queries: list[Query], start: int, count: int,
                    k: int, server_pid: int | None) -> Level:
    level = Level(clients)
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # warm-up (not timed): one query per client, from a separate part of the pool
        await asyncio.gather(*(post(session, url, queries[(start - 1 - i) % len(queries)], k)
                               for i in range(clients)))
        next_i = 0

        async def client() -> None:
            nonlocal next_i
            while next_i < count:
                q = queries[(start + next_i) % len(queries)]
                next_i += 1
                t0 = time.perf_counter()
                try:
                    status, body = await post(session, url, q, k)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    level.errors[type(exc).__name__] = level.errors.get(type(exc).__name__, 0) + 1
                    continue
                dt = time.perf_counter() - t0
                if status != 200 or not isinstance(body, dict):
                    level.errors[str(status)] = level.errors.get(str(status), 0) + 1
                    continue
                level.latencies.append(dt)
                level.server_ms.append(sum(body.get("timings_ms", {}).values()))
                results = body.get("results") or []
                if results and results[0]["url"] == q.expected:
                    level.correct += 1

        cpu0, scpu0 = time.process_time(), proc_cpu(server_pid)
        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        level.seconds = time.perf_counter() - t0
        level.client_cpu = time.process_time() - cpu0
        scpu1 = proc_cpu(server_pid)
        if scpu0 is not None and scpu1 is not None:
            level.server_cpu = scpu1 - scpu0
    return level


def proc_cpu(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- server ----------------------------------------------------------------------------------

def start_server(data_dir: Path, port: int, threads: int) -> subprocess.Popen:
    code = ("import sys; from pathlib import Path; from echoimage.config import Settings; "
            "from echoimage.web.app import serve; "
            "serve(Settings(data_dir=Path(sys.argv[1])), '127.0.0.1', int(sys.argv[2]), "
            "access_log=False)")
    env = dict(os.environ)
    if threads:
        env["ECHOIMAGE_QUERY_THREADS"] = str(threads)
    return subprocess.Popen([sys.executable, "-c", code, str(data_dir), str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def wait_healthy(url: str, proc: subprocess.Popen | None, seconds: float = 300) -> dict:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while True:
            if proc is not None and proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise SystemExit(f"server exited with {proc.returncode}:\n{err[-3000:]}")
            try:
                async with session.get(f"{url}/api/stats") as resp:
                    if resp.status == 200:
                        return await resp.json()
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("server did not become healthy")
            await asyncio.sleep(0.25)


# --- main ------------------------------------------------------------------------------------

def report(levels: list[Level], stats: dict, args: argparse.Namespace, load: float) -> str:
    lines = [
        f"Catalogue: {stats['index']['entries']:,} indexed entries"
        + (f" (the last {args.recent} added by a later build)" if args.recent and not args.url
           else "") + f"; server query threads: "
        f"{stats['server']['query_threads']}; machine: {os.cpu_count()} cores; "
        f"1-minute load average before the run: {load:.2f}; k={args.k}.",
        "",
        "| clients | queries | errors | queries/s | p50 ms | p95 ms | p99 ms | top-1 correct "
        "| server CPU ms/query | engine ms/query (wall) | client CPU ms/query |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lv in levels:
        errors = sum(lv.errors.values())
        qps = lv.done / lv.seconds if lv.seconds else 0.0
        cpu = (f"{1000 * lv.server_cpu / lv.done:.1f}" if lv.server_cpu is not None and lv.done
               else "n/a")
        server = f"{statistics.fmean(lv.server_ms):.1f}" if lv.server_ms else "n/a"
        lines.append(
            f"| {lv.clients} | {lv.done} | {errors} | {qps:.1f} | {lv.pct(50):.0f} | "
            f"{lv.pct(95):.0f} | {lv.pct(99):.0f} | {lv.correct / max(lv.done, 1):.1%} | "
            f"{cpu} | {server} | {1000 * lv.client_cpu / max(lv.done, 1):.1f} |")
        if lv.errors:
            lines.append(f"|  | errors: {lv.errors} | | | | | | | | | |")
    return "\n".join(lines)


async def amain(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    images_dir = Path(args.images_dir).resolve() if args.images_dir else data_dir / "catalogue"
    photos = Path(args.photos) if args.photos else (DEFAULT_PHOTOS if DEFAULT_PHOTOS.is_dir()
                                                    else None)
    proc = None
    if args.url:
        url = args.url.rstrip("/")
        reals = real_photos(photos, args.real, images_dir / "real")
    else:
        # build_index runs its own event loop: keep it off this one
        reals = await asyncio.to_thread(ensure_catalogue, data_dir / "data", images_dir,
                                        args.entries, photos, args.real, args.recent)
        url = f"http://127.0.0.1:{args.port}"
        proc = start_server(data_dir / "data", args.port, args.threads)
    try:
        stats = await wait_healthy(url, proc)
        pool = [make_query(p, i) for i, p in enumerate(reals)]
        while len(pool) < args.pool:  # more variants of the same photos, still all different
            i = len(pool)
            pool.append(make_query(reals[i % len(reals)], i))
        print(f"server up: {stats['index']['entries']} entries; {len(pool)} distinct queries",
              file=sys.stderr)
        levels = []
        start = 0
        load = os.getloadavg()[0]
        for clients in [int(c) for c in args.clients.split(",")]:
            lv = await run_level(url, clients, pool, start, args.queries, args.k,
                                 proc.pid if proc else None)
            start += args.queries + clients
            levels.append(lv)
            print(f"{clients:>3} clients: {lv.done / lv.seconds:.1f} q/s, p50 {lv.pct(50):.0f} "
                  f"ms, p95 {lv.pct(95):.0f} ms, errors {sum(lv.errors.values())}",
                  file=sys.stderr)
        table = report(levels, stats, args, load)
        print(table)
        if args.out:
            Path(args.out).write_text(table + "\n")
        return 1 if any(lv.errors for lv in levels) else 0
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="use a running server instead of starting one")
    parser.add_argument("--data-dir", default=str(ROOT / "bench-out" / "loadtest"),
                        help="catalogue images and store (reused by later runs)")
    parser.add_argument("--images-dir", help="where the catalogue images are cached "
                                             "(default: DATA_DIR/catalogue)")
    parser.add_argument("--recent", type=int, default=100,
                        help="images added by a second, later build (0: one build)")
    parser.add_argument("--entries", type=int, default=10_000, help="catalogue size")
    parser.add_argument("--photos", help="folder of real photos (default: BSDS500 if present)")
    parser.add_argument("--real", type=int, default=500, help="real photos in the catalogue")
    parser.add_argument("--clients", default="1,4,16", help="client counts, comma-separated")
    parser.add_argument("--queries", type=int, default=300, help="timed queries per level")
    parser.add_argument("--pool", type=int, default=1000, help="distinct query images")
    parser.add_argument("-k", type=int, default=5, help="results per query")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--threads", type=int, default=0,
                        help="server query threads (default: one per core)")
    parser.add_argument("--out", help="also write the markdown table here")
    args = parser.parse_args()
    sys.exit(asyncio.run(amain(args)))


if __name__ == "__main__":
    main()
