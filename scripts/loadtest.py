"""Load benchmark of `echoimage serve`: concurrent clients posting distinct images to a real
server on 127.0.0.1, most of them finding no copy, as a real service's traffic does.

1. **Catalogue**: a seeded split of a photo folder (BSDS500 by default): `--photos` photos
   indexed as a folder catalogue, `--negatives` held out; then padded to `--entries` with
   rows derived from the photos' (`echoimage_bench.derived`, as the scale benchmark pads)
   and the index rebuilt. Kept in `--data-dir` and reused by later runs.
2. **Queries**, made before any timing: copies (catalogue photos under the benchmark's
   transforms, `echoimage_bench.transforms`) and no-copy queries (held-out photos under
   the same transforms), `--no-copy` of them (70% by default), every request different
   bytes (each (photo, transform) once, re-encoded at a quality of its own).
3. **Load**: `echoimage serve --workers N` on 127.0.0.1 (or `--url`), then for each client
   count in `--clients` (1, 4, 8, 16, 64) `--queries` requests of the mix (each client posts,
   waits for the answer, posts the next; a 503 is counted as a refusal and the client
   waits its Retry-After). Reported per level: accepted queries/s, p50/p95/p99 of the
   accepted ones, refusals (503 with Retry-After), timeouts and other errors, copies found
   first, no-copy queries answered "no copy", server CPU per query. At the end /metrics is
   scraped and its count of search requests compared with what the clients sent; /healthz
   and /readyz are asked too. `--copies-only` asks for the copies alone (the search API's
   `copies_only`), as a client that wants no nearest images does.

Example:

    .venv/bin/python scripts/loadtest.py ../shared/datasets/bsds500 --entries 100000
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SEARCH_ROUTE = "/api/search"
WARM_UP = 8  # queries sent before the first level (not timed; /metrics counts them)


# --- catalogue ------------------------------------------------------------------------------

def split(photo_dir: Path, photos: int, negatives: int, seed: int, catalogue: Path
          ) -> tuple[list[Path], list[Path]]:
    """The seeded split of the scale benchmark (the same photos for the same seed), linked
    afresh into the directory catalogue."""
    from echoimage_bench.scale import split_catalogue

    shutil.rmtree(catalogue, ignore_errors=True)
    cat, held, _ = split_catalogue(photo_dir, photos, negatives, seed, catalogue)
    return cat, held


def indexed_counts(data_dir: Path) -> tuple[int, int]:
    """(images indexed in the store, entries of a usable index); (0, 0) when there is no
    catalogue yet."""
    from echoimage.api import Catalogue
    from echoimage.config import Settings
    from echoimage.errors import EchoImageError

    try:
        with Catalogue(Settings(data_dir=data_dir)) as catalogue:
            index = catalogue.status()["index"]
    except (EchoImageError, KeyError, TypeError):
        return 0, 0
    usable = int(index.get("entries") or 0) if not index.get("unusable") else 0
    return int(index.get("store_indexed") or 0), usable


def ensure_catalogue(data_dir: Path, photo_dir: Path, entries: int, photos: int,
                     negatives: int, seed: int, log: Any) -> tuple[list[Path], list[Path]]:
    """A catalogue of `entries` in data_dir/data: the photos, then derived padding, then an
    index rebuild (reused when it is there already). Returns (catalogue photos, held out)."""
    from echoimage.api import Catalogue
    from echoimage.config import Settings
    from echoimage_bench.derived import add_derived_rows

    data = data_dir / "data"
    cat, held = split(photo_dir, photos, negatives, seed, data_dir / "catalogue")
    stored, searchable = indexed_counts(data)
    settings = Settings(data_dir=data)
    if stored == searchable == entries:
        log(f"catalogue of {entries:,} entries already indexed in {data}")
        return cat, held
    if stored == entries:  # the store is there, its index is not (or is out of date)
        t0 = time.perf_counter()
        with Catalogue(settings) as catalogue:
            catalogue.rebuild("load benchmark: the index was not usable")
        log(f"index rebuilt in {time.perf_counter() - t0:.0f} s")
        return cat, held
    shutil.rmtree(data, ignore_errors=True)
    t0 = time.perf_counter()
    with Catalogue(settings) as catalogue:
        summary = catalogue.build(str(data_dir / "catalogue"))
        log(f"{summary.counts.get('indexed', 0)} photos indexed in "
            f"{time.perf_counter() - t0:.0f} s")
        n = summary.counts.get("indexed", 0)
        if entries > n:
            t0 = time.perf_counter()
            add_derived_rows(catalogue.open_store(), n, entries - n, seed=seed,
                             workers=os.cpu_count() or 1)
            log(f"padded to {entries:,} entries in {time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        catalogue.rebuild("load benchmark padding")
        log(f"index rebuilt in {time.perf_counter() - t0:.0f} s")
    return cat, held


# --- queries ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Query:
    """One request: JPEG bytes, the catalogue URL it should find first (None: no copy)."""

    data: bytes
    expected: str | None
    transform: str


def make_queries(cat: list[Path], held: list[Path], catalogue: Path, count: int,
                 no_copy: float, seed: int) -> list[Query]:
    """count distinct queries, a `no_copy` share from held-out photos, in a seeded order:
    each (photo, transform) at most once (re-encoded at a quality of its own), and no two
    with the same bytes."""
    from echoimage.fetch.local import path_url
    from echoimage_bench.context import read_bgr
    from echoimage_bench.transforms import TRANSFORMS, encode_jpeg, transform_rng

    rng = random.Random(seed)
    n_neg = round(count * no_copy)
    wanted = {False: count - n_neg, True: n_neg}
    pairs = {neg: [(p, t) for p in (held if neg else cat) for t in TRANSFORMS]
             for neg in (False, True)}
    for neg, n in wanted.items():
        if n > len(pairs[neg]):
            raise SystemExit(f"{n} {'no-copy' if neg else 'copy'} queries asked for, but "
                             f"only {len(pairs[neg])} distinct ones can be made: fewer "
                             "--queries or more photos")
        rng.shuffle(pairs[neg])
        pairs[neg] = pairs[neg][:n]
    order = [True] * n_neg + [False] * (count - n_neg)
    rng.shuffle(order)
    images: dict[Path, np.ndarray] = {}
    seen: set[str] = set()
    out = []
    for neg in order:
        photo, name = pairs[neg].pop()
        img = images.get(photo)
        if img is None:
            img = images[photo] = read_bgr(photo)
        t = TRANSFORMS[name]
        pixels = t.fn(img, transform_rng(seed, zlib.crc32(photo.name.encode()), name))
        quality = max(20, min(95, t.quality + rng.randint(-8, 5)))
        data = encode_jpeg(pixels, quality)
        while (digest := hashlib.sha256(data).hexdigest()) in seen:
            quality = quality - 1 if quality > 20 else 95
            data = encode_jpeg(pixels, quality)
        seen.add(digest)
        truth = None if neg else path_url((catalogue / photo.name).resolve())
        out.append(Query(data, truth, f"{name} q{quality}"))
    return out


# --- load ------------------------------------------------------------------------------------

@dataclass
class Level:
    """What one client count measured."""

    clients: int
    latencies: list[float] = field(default_factory=list)  # accepted (200) queries, seconds
    refused: int = 0  # 503 with Retry-After
    refused_without_retry_after: int = 0
    timeouts: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    copies: int = 0
    copies_first: int = 0
    no_copy: int = 0
    no_copy_clean: int = 0
    seconds: float = 0.0
    server_cpu: float | None = None
    stages: dict[str, list[float]] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return len(self.latencies)

    def pct(self, p: float) -> float:
        return float(np.percentile(np.array(self.latencies) * 1000, p)) if self.latencies \
            else float("nan")

    @property
    def qps(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0


async def post(session: aiohttp.ClientSession, url: str, q: Query, fields: dict[str, str]
               ) -> tuple[int, dict[str, Any] | str, str | None]:
    """POST one query with the form's other fields (k, copies_only): (status, JSON body or
    text, Retry-After)."""
    form = aiohttp.FormData()
    form.add_field("file", q.data, filename="query.jpg", content_type="image/jpeg")
    for name, value in fields.items():
        form.add_field(name, value)
    async with session.post(f"{url}{SEARCH_ROUTE}", data=form) as resp:
        body = await resp.read()
        retry = resp.headers.get("Retry-After")
        if resp.status != 200:
            return resp.status, body.decode("utf-8", "replace")[:200], retry
        return resp.status, json.loads(body), retry


async def run_level(url: str, clients: int, queries: list[Query], fields: dict[str, str],
                    timeout: float, server_pids: list[int]) -> Level:
    """`clients` concurrent clients sending `queries` between them (each once)."""
    level = Level(clients)
    connector = aiohttp.TCPConnector(limit=clients)
    todo = iter(queries)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as session:

        async def client() -> None:
            for q in todo:
                level.sent += 1
                t0 = time.perf_counter()
                try:
                    status, body, retry = await post(session, url, q, fields)
                except TimeoutError:
                    level.timeouts += 1
                    continue
                except aiohttp.ClientError as exc:
                    name = type(exc).__name__
                    level.errors[name] = level.errors.get(name, 0) + 1
                    continue
                dt = time.perf_counter() - t0
                if status == 503:
                    level.refused += 1
                    if retry is None:
                        level.refused_without_retry_after += 1
                    await asyncio.sleep(float(retry or 1))
                    continue
                if status != 200 or not isinstance(body, dict):
                    level.errors[str(status)] = level.errors.get(str(status), 0) + 1
                    continue
                level.latencies.append(dt)
                for stage, ms in (body.get("timings_ms") or {}).items():
                    level.stages.setdefault(stage, []).append(ms)
                results = body.get("results") or []
                if q.expected is None:
                    level.no_copy += 1
                    level.no_copy_clean += not body.get("found")
                else:
                    level.copies += 1
                    level.copies_first += bool(results and results[0]["url"] == q.expected)

        cpu0 = procs_cpu(server_pids)
        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        level.seconds = time.perf_counter() - t0
        cpu1 = procs_cpu(server_pids)
        if cpu0 is not None and cpu1 is not None:
            level.server_cpu = cpu1 - cpu0
    return level


def procs_cpu(pids: list[int]) -> float | None:
    """User + system CPU seconds of processes and their children (Linux /proc), or None."""
    if not pids:
        return None
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def rss_mb(pid: int) -> dict[str, float]:
    """A process's resident memory (MB): its own (anonymous) and mapped files' pages."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                out[key] = int(rest.split()[0]) / 1024
    except OSError:
        pass
    return out


def server_pids(root: int) -> list[int]:
    """The server's process and its children (the serving processes, and with several of
    them multiprocessing's resource tracker)."""
    pids = [root]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == root:
            pids.append(int(stat.parent.name))
    return pids


def serving_pids(pids: list[int]) -> list[int]:
    """Of the server's processes, those that answer requests: the workers uvicorn spawned,
    or the one process when there are none."""
    workers = []
    for pid in pids[1:]:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            workers.append(pid)
    return workers or pids[:1]


# --- the server ---------------------------------------------------------------------------

def start_server(data: Path, port: int, workers: int, threads: int, queue: int | None
                 ) -> subprocess.Popen[bytes]:
    """`echoimage serve` on 127.0.0.1 with its access log off."""
    env = dict(os.environ, ECHOIMAGE_ACCESS_LOG="off")
    if threads:
        env["ECHOIMAGE_QUERY_THREADS"] = str(threads)
    if queue is not None:
        env["ECHOIMAGE_MAX_WAITING"] = str(queue)
    cmd = [sys.executable, "-m", "echoimage", "--data-dir", str(data), "serve",
           "--host", "127.0.0.1", "--port", str(port)]
    if workers:
        cmd += ["--workers", str(workers)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def wait_ready(url: str, proc: subprocess.Popen[bytes] | None,
                     seconds: float = 600) -> dict[str, int]:
    """Poll /healthz and /readyz until ready; the status codes seen of each."""
    seen = {"healthz": 0, "readyz_before": 0, "readyz": 0}
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while True:
            if proc is not None and proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise SystemExit(f"server exited with {proc.returncode}:\n{err[-3000:]}")
            try:
                async with session.get(f"{url}/healthz") as resp:
                    seen["healthz"] = resp.status
                async with session.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        seen["readyz"] = 200
                        return seen
                    seen["readyz_before"] = resp.status
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not become ready")
            await asyncio.sleep(0.2)


_SAMPLE = re.compile(r'^(\w+)\{([^}]*)\} ([0-9.eE+-]+)$')


async def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """GET /metrics: samples by (name, labels)."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/metrics") as resp:
            text = await resp.text()
    samples = {}
    for line in text.splitlines():
        if m := _SAMPLE.match(line):
            labels = frozenset(tuple(part.split("=", 1)) for part in
                               re.findall(r'\w+="[^"]*"', m.group(2)))
            labels = frozenset((k, v.strip('"')) for k, v in labels)
            samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def searches_counted(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> float:
    """Search requests the server counted, whatever their status."""
    return sum(v for (name, labels), v in samples.items()
               if name == "echoimage_http_requests_total"
               and ("route", SEARCH_ROUTE) in labels)


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> float:
    """The sum of a metric's samples over its labels."""
    return sum(v for (n, _), v in samples.items() if n == name)


def code_version() -> str:
    """The commit the server's code is from (with "+ changes" when the tree differs)."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=10", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit} + changes" if dirty else commit


# --- report ------------------------------------------------------------------------------------

#: the latency a level's p95 must stay under for its queries/s to count toward the target
P95_TARGET_MS = 300

def report(levels: list[Level], info: dict[str, Any]) -> str:
    """The markdown table and the targets."""
    lines = [
        f"Catalogue: {info['entries']:,} entries ({info['photos']} photos, the rest derived "
        f"padding); {info['negatives']} held-out photos; server: {info['workers']}; "
        f"machine: {os.cpu_count()} cores, 1-minute load {info['load']:.2f} before the run; "
        f"{info['no_copy']:.0%} no-copy queries, k={info['k']}"
        f"{', copies only' if info.get('copies_only') else ''}; code at commit "
        f"{info['commit']}.",
        "",
        "| clients | sent | accepted | refused (503) | timeouts | other errors | queries/s | "
        "p50 ms | p95 ms | p99 ms | copies first | no-copy answered so | server CPU ms/query |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lv in levels:
        cpu = f"{1000 * lv.server_cpu / lv.done:.0f}" if lv.server_cpu and lv.done else "n/a"
        lines.append(
            f"| {lv.clients} | {lv.sent} | {lv.done} | {lv.refused} | {lv.timeouts} | "
            f"{sum(lv.errors.values())} | {lv.qps:.2f} | {lv.pct(50):.0f} | {lv.pct(95):.0f} | "
            f"{lv.pct(99):.0f} | {lv.copies_first}/{lv.copies} | "
            f"{lv.no_copy_clean}/{lv.no_copy} | {cpu} |")
        if lv.errors:
            lines.append(f"|  | errors: {lv.errors} |" + " |" * 11)
    by = {lv.clients: lv for lv in levels}
    lines.append("")
    if 1 in by:
        one = by[1]
        stages = {s: float(np.median(v)) for s, v in one.stages.items()}
        lines.append("One client, median stage times (ms): "
                     + ", ".join(f"{s.removesuffix('_ms')} {v:.0f}" for s, v in stages.items()))
    if 1 in by and 16 in by and by[1].qps:
        lines.append(f"16 clients / 1 client: **{by[16].qps / by[1].qps:.2f}x** the "
                     "queries/s (target >= 1.7x)")
    if 16 in by and 64 in by and by[16].latencies and by[64].latencies:
        lv = by[64]
        lines.append(
            f"64 clients: {lv.refused} refused with 503 ({lv.refused_without_retry_after} "
            f"without Retry-After), {lv.timeouts} timeouts, {sum(lv.errors.values())} other "
            f"errors; p95 of accepted {lv.pct(95):.0f} ms = **{lv.pct(95) / by[16].pct(95):.2f}x"
            "** the 16-client p95 (target <= 1.5x)")
    under = [lv for lv in levels if lv.latencies and lv.pct(95) < P95_TARGET_MS]
    if under:
        lv = max(under, key=lambda lv: lv.qps)
        lines.append(f"Most queries/s with p95 < {P95_TARGET_MS} ms: **{lv.qps:.2f}** at "
                     f"{lv.clients} clients (p95 {lv.pct(95):.0f} ms; target >= 60 at "
                     "100,000 entries)")
    sent, counted = info["sent"], info["counted"]
    loading = (f"{info['readyz_before']} while loading then {info['readyz']}"
               if info["readyz_before"] else f"{info['readyz']} (ready when first asked)")
    lines.append(f"/metrics counted {counted:.0f} search requests; the clients sent {sent} "
                 f"(difference {abs(counted - sent) / max(sent, 1):.2%}, target <= 1%); "
                 f"/healthz {info['healthz']}, /readyz {loading}")
    if info.get("memory"):
        own = [m.get("RssAnon", 0) for m in info["memory"]]
        mapped = [m.get("RssFile", 0) for m in info["memory"]]
        lines.append(f"Serving processes' memory at the end: {', '.join(f'{a:.0f}' for a in own)}"
                     f" MB of their own, {', '.join(f'{f:.0f}' for f in mapped)} MB of mapped "
                     "files (the index pages, shared)")
    if info.get("cpu_ms"):
        lines.append(f"Server CPU per accepted query at 16 clients: {info['cpu_ms']:.0f} ms "
                     f"(so {os.cpu_count()} cores like these give at most "
                     f"~{1000 * (os.cpu_count() or 1) / info['cpu_ms']:.1f} queries/s)")
    return "\n".join(lines)


async def amain(args: argparse.Namespace) -> int:
    def log(msg: str) -> None:
        print(f"loadtest: {msg}", file=sys.stderr, flush=True)

    data_dir = Path(args.data_dir).resolve()
    levels_wanted = [int(c) for c in args.clients.split(",")]
    cat, held = await asyncio.to_thread(
        ensure_catalogue, data_dir, Path(args.photo_dir), args.entries, args.photos,
        args.negatives, args.seed, log)
    total = args.queries * len(levels_wanted) + WARM_UP
    queries = await asyncio.to_thread(make_queries, cat, held, data_dir / "catalogue",
                                      total, args.no_copy, args.seed)
    warm, queries = queries[:WARM_UP], queries[WARM_UP:]
    log(f"{len(queries)} distinct queries made ({args.no_copy:.0%} no-copy)")
    if args.prepare_only:
        return 0
    proc = None
    if args.url:
        url = args.url.rstrip("/")
    else:
        url = f"http://127.0.0.1:{args.port}"
        proc = start_server(data_dir / "data", args.port, args.workers, args.threads,
                            args.queue)
    try:
        seen = await wait_ready(url, proc)
        pids = server_pids(proc.pid) if proc else []
        if pids:
            log(f"server ready ({len(serving_pids(pids))} serving processes, {len(pids)} "
                "in all)")
        else:
            log("server ready")
        before = await scrape(url)
        fields = {"k": str(args.k)}
        if args.copies_only:
            fields["copies_only"] = "true"
        warm_up = await run_level(url, 2, warm, fields, args.timeout, [])
        load = os.getloadavg()[0]
        levels = []
        for i, clients in enumerate(levels_wanted):
            chunk = queries[i * args.queries:(i + 1) * args.queries]
            lv = await run_level(url, clients, chunk, fields, args.timeout, pids)
            levels.append(lv)
            log(f"{clients:>3} clients: {lv.qps:.2f} q/s, p50 {lv.pct(50):.0f} ms, p95 "
                f"{lv.pct(95):.0f} ms, refused {lv.refused}, timeouts {lv.timeouts}, "
                f"errors {sum(lv.errors.values())}")
        after = await scrape(url)
        serving = serving_pids(pids)
        memory = [rss_mb(pid) for pid in serving]
        by = {lv.clients: lv for lv in levels}
        ref = by.get(16) or levels[-1]
        info = {
            "entries": int(sample(after, "echoimage_index_entries")) or args.entries,
            "photos": len(cat), "negatives": len(held), "load": load, "k": args.k,
            "copies_only": args.copies_only,
            "no_copy": args.no_copy, "commit": code_version(),
            "workers": f"{len(serving)} serving process(es)" if proc else url,
            "sent": warm_up.sent + sum(lv.sent for lv in levels),
            "memory": memory,
            "counted": searches_counted(after) - searches_counted(before),
            "cpu_ms": 1000 * ref.server_cpu / ref.done if ref.server_cpu and ref.done
            else None,
            **seen,
        }
        table = report(levels, info)
        print(table)
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "loadtest.md").write_text(table + "\n")
            (out / "loadtest.json").write_text(json.dumps({
                "info": info, "levels": [
                    {"clients": lv.clients, "sent": lv.sent, "accepted": lv.done,
                     "refused": lv.refused, "timeouts": lv.timeouts, "errors": lv.errors,
                     "qps": lv.qps, "p50_ms": lv.pct(50), "p95_ms": lv.pct(95),
                     "p99_ms": lv.pct(99), "copies": lv.copies,
                     "copies_first": lv.copies_first, "no_copy": lv.no_copy,
                     "no_copy_clean": lv.no_copy_clean, "server_cpu_s": lv.server_cpu}
                    for lv in levels]}, indent=2))
        failed = any(lv.timeouts or lv.errors for lv in levels)
        return 1 if failed else 0
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photo_dir", help="folder of real photos (BSDS500: 500 photos)")
    parser.add_argument("--url", help="load a running server instead of starting one (its "
                                      "catalogue must be this one, in --data-dir)")
    parser.add_argument("--data-dir", default=str(ROOT / "bench-out" / "loadtest"),
                        help="the catalogue and its store (reused by later runs)")
    parser.add_argument("--entries", type=int, default=100_000, help="catalogue size")
    parser.add_argument("--photos", type=int, default=400, help="real photos in it")
    parser.add_argument("--negatives", type=int, default=100,
                        help="held-out photos (the no-copy queries)")
    parser.add_argument("--no-copy", type=float, default=0.7,
                        help="share of the queries that have no copy in the catalogue")
    parser.add_argument("--clients", default="1,4,8,16,64",
                        help="client counts, comma-separated")
    parser.add_argument("--queries", type=int, default=200,
                        help="requests per client count (each request a different image)")
    parser.add_argument("-k", type=int, default=5, help="results per query")
    parser.add_argument("--copies-only", action="store_true",
                        help="ask for the copies alone (copies_only), not the nearest images")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds a client waits for an answer before calling it a "
                             "timeout")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--workers", type=int, default=0,
                        help="serving processes (default: the server's, one per core)")
    parser.add_argument("--threads", type=int, default=0,
                        help="queries each process runs at once (default: the server's)")
    parser.add_argument("--queue", type=int, default=None,
                        help="queries each process lets wait (default: the server's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prepare-only", action="store_true",
                        help="make the catalogue and the queries, then stop")
    parser.add_argument("--out", help="also write loadtest.md and loadtest.json here")
    args = parser.parse_args()
    sys.exit(asyncio.run(amain(args)))


if __name__ == "__main__":
    main()
