"""The live-index benchmark: how fast the index follows the catalogue, and what a serving
process sees meanwhile.

`run_live_benchmark(photo_dir, out_dir)`:

1. **one-image update**: a folder catalogue of ~850 images (the photos plus procedural
   images) is built; one image is added and `echoimage index update` runs: wall time,
   process start-up (the same interpreter importing the same modules) and the update's own
   time;
2. **100 new, 100 changed, 100 removed at scale**: 400 photos in a folder catalogue padded
   with derived rows (`bench.derived`) to `entries`; the full rebuild is timed as the
   baseline; a serving engine (background refresh) answers queries in a thread, idle and
   while `echoimage index update` runs in another process after the folder changed; the
   update's time and breakdown, query latency idle and during the update, errors, and how
   long after the update the new images are answered; with `update_rounds`, further
   updates of the same kind (the last round's new images removed, other versions of the
   held-out photos added, the 100 changed again), each with the feature workers' niceness
   of `worker_nice` in turn, their latency pooled by niceness;
3. **growth**: ten updates that add 2% of the catalogue each (derived rows, 20% in all),
   each followed by the index update; recall@1 of the photos under every transform with
   that incrementally maintained index, then after a full rebuild (retrained quantizer) of
   the same store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from echoimage_bench.context import Log, build_catalogue, list_photos, read_bgr, search_engine
from echoimage_bench.derived import add_derived_rows
from echoimage_bench.memory import self_peak_rss_mb
from echoimage_bench.metrics import percentile, rank_of, rate
from echoimage_bench.synthetic import synthetic_image
from echoimage_bench.transforms import TRANSFORMS, make_query, transform_rng

TOP_K = 5


def _cli(data_dir: Path, *args: str | Path, timeout: float = 3600,
         env: dict[str, str] | None = None) -> tuple[float, dict]:
    """Run `echoimage --data-dir DATA ARGS --json` in a subprocess (with env added to its
    environment): (seconds, its JSON)."""
    cmd = [sys.executable, "-m", "echoimage", "--data-dir", str(data_dir), *map(str, args)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed: {proc.stderr[-2000:]}")
    return seconds, json.loads(proc.stdout)


def _startup_seconds(repeat: int = 3) -> float:
    """What a process pays before an update does anything: the interpreter and the imports
    of the update command (median of a few)."""
    code = ("import echoimage.cli, echoimage.indexing.update, echoimage.indexing.build, "
            "echoimage.index.build, echoimage.store.db")
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _write_png(path: Path, gray: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", gray)
    assert ok
    path.write_bytes(buf.tobytes())


def one_image_update(photos: list[Path], work: Path, size: int, log: Log) -> dict[str, Any]:
    """Stage 1: a folder catalogue of `size` images, one image added, `index update`."""
    folder = work / "small-catalogue"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for p in photos[:size]:
        shutil.copy(p, folder / p.name)
    for i in range(max(0, size - len(photos))):
        _write_png(folder / f"synthetic-{i:04d}.png", synthetic_image(i, seed=3))
    data = work / "small-data"
    shutil.rmtree(data, ignore_errors=True)
    build_s, built = _cli(data, "index", "build", "-q", "--json", folder)
    log(f"small catalogue: {built['index_entries']} images built in {build_s:.1f}s")
    runs = []
    for n in range(3):
        _write_png(folder / f"added-{n}.png", synthetic_image(10_000 + n, seed=3))
        wall, summary = _cli(data, "index", "update", "-q", "--json")
        runs.append({"wall_s": wall, "update_s": summary["seconds"],
                     "index": summary["index"], "counts": summary["counts"]})
    startup = _startup_seconds()
    walls = [r["wall_s"] for r in runs]
    out = {"images": built["index_entries"], "build_s": build_s, "runs": runs,
           "startup_s": startup, "wall_s_median": float(np.median(walls)),
           "beyond_startup_s_median": float(np.median(walls)) - startup,
           "update_s_median": float(np.median([r["update_s"] for r in runs]))}
    log(f"one-image update: {out['wall_s_median']:.2f}s wall, start-up {startup:.2f}s, "
        f"{out['beyond_startup_s_median']:.2f}s beyond it")
    return out


@dataclass
class _Load:
    """A thread that queries the engine in a loop and records (time, ms, ok)."""

    engine: Any
    queries: list[bytes]
    samples: list[tuple[float, float, bool]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            data = self.queries[i % len(self.queries)]
            i += 1
            t0 = time.perf_counter()
            try:
                self.engine.query_bytes(data, k=TOP_K)
                ok = True
            except Exception as exc:  # noqa: BLE001 - counted and reported
                ok = False
                self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
            self.samples.append((time.time(), (time.perf_counter() - t0) * 1000, ok))

    def finish(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(60)

    def between(self, t0: float, t1: float) -> dict[str, Any]:
        return self.within([(t0, t1)])

    def within(self, windows: list[tuple[float, float]]) -> dict[str, Any]:
        """Queries, errors, p50 and p95 of the queries answered in any of the windows."""
        ms = [m for t, m, _ in self.samples if any(t0 <= t <= t1 for t0, t1 in windows)]
        bad = sum(1 for t, _, ok in self.samples
                  if not ok and any(t0 <= t <= t1 for t0, t1 in windows))
        return {"queries": len(ms), "errors": bad, "p50_ms": percentile(ms, 50),
                "p95_ms": percentile(ms, 95)}


def _write_crop(src: Path, dst: Path, quality: int, *, top: float = 0.0,
                margin: float = 0.0) -> None:
    """src without `margin` of each side (and `top` more of its top), as a JPEG of that
    quality at dst."""
    img = read_bgr(src)
    h, w = img.shape[:2]
    def cut(n: int, share: float) -> int:  # floor(n × share), as n × k // d would give
        return int(n * share + 1e-9)

    dy, dx = cut(h, margin), cut(w, margin)
    ok, buf = cv2.imencode(".jpg", img[dy + cut(h, top):h - dy, dx:w - dx],
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"cannot encode a crop of {src}")
    dst.write_bytes(buf.tobytes())


def _queries(photos: list[Path], names: list[str], seed: int) -> list[tuple[int, str, bytes]]:
    out = []
    for i, p in enumerate(photos):
        img = read_bgr(p)
        if img is None:
            continue
        for name in names:
            out.append((i, name, make_query(img, TRANSFORMS[name], transform_rng(seed, i, name))))
    return out


def _recall(engine: Any, queries: list[tuple[int, str, bytes]], urls: list[str],
            log: Log, label: str) -> dict[str, Any]:
    per: dict[str, list[bool]] = {}
    tick = log.loop(f"recall {label}", len(queries))
    for n, (i, name, data) in enumerate(queries, 1):
        res = engine.query_bytes(data, k=TOP_K)
        per.setdefault(name, []).append(rank_of(urls[i], [m.url for m in res.matches]) == 1)
        tick(n)
    return {name: rate(v) for name, v in per.items()}


def run_live_benchmark(photo_dir: str | Path, out_dir: str | Path, *, entries: int = 100_000,
                       small: int = 850, recall_photos: int = 100, seed: int = 0,
                       update_rounds: int = 1, worker_nice: list[int] | None = None,
                       progress: bool = True) -> dict[str, Any]:
    """Run the three stages (see the module docstring); writes out_dir/live.json.
    update_rounds: stage 2's update that many times (other changes each time: its query
    latency pooled over more queries); worker_nice: the feature workers' niceness of each
    round in turn (ECHOIMAGE_WORKER_NICE; default: the setting's)."""
    from echoimage.config import Settings
    from echoimage.index.build import rebuild_index_files
    from echoimage.store.db import open_store

    log = Log(progress, "bench live")
    out_dir = Path(out_dir)
    work = out_dir / "live"
    work.mkdir(parents=True, exist_ok=True)
    photos = list_photos(Path(photo_dir))
    result: dict[str, Any] = {"entries": entries, "photos": len(photos),
                              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    result["one_image_update"] = one_image_update(photos, work, small, log)

    # --- stage 2: 100 new, 100 changed, 100 removed at scale --------------------------------
    catalogue, held = photos[:400], photos[400:500]
    folder = work / "catalogue"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for p in catalogue:
        shutil.copy(p, folder / p.name)
    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    settings = Settings(data_dir=data)
    build_catalogue(settings, str(folder))
    engine = open_store(settings)
    pad = entries - len(catalogue)
    tick = log.loop("derived padding", pad)
    pad_s = add_derived_rows(engine, 0, pad, seed=seed, progress=tick)
    t0 = time.perf_counter()
    rebuilt = rebuild_index_files(settings, engine, "benchmark baseline")
    rebuild_s = time.perf_counter() - t0
    log(f"{entries:,} entries: padding {pad_s:.0f}s, full rebuild {rebuild_s:.0f}s")
    result["scale"] = {"padding_s": pad_s, "padding_rows_per_s": pad / max(pad_s, 1e-9),
                       "full_rebuild_s": rebuild_s, "rebuild": rebuilt.as_dict(),
                       "store_bytes": sum(f.stat().st_size for f in data.glob("echoimage*")),
                       "index_bytes": sum(f.stat().st_size for f in (data / "index").iterdir()
                                          if f.is_file())}

    names = ["identity", "jpeg30", "mirror", "crop80", "rot90", "crop60_rand"]
    load_queries = [q for _, _, q in _queries(catalogue[200:230], names, seed)]
    search = search_engine(settings, background=True)
    load = _Load(search, load_queries)
    load.start()
    time.sleep(20)
    idle_end = time.time()
    idle = load.between(idle_end - 15, idle_end)

    urls = {p.name: str((folder / p.name).resolve()) for p in catalogue + held}
    for p in held:  # 100 new
        shutil.copy(p, folder / p.name)
    for p in catalogue[:100]:  # 100 changed: a re-encoded 90% crop in place
        _write_crop(p, folder / p.name, 85, margin=1 / 20)
    for p in catalogue[100:200]:  # 100 removed
        (folder / p.name).unlink()
    nices = list(worker_nice) if worker_nice else [None]

    def nice_env(r: int) -> dict[str, str]:
        n = nices[r % len(nices)]
        return {} if n is None else {"ECHOIMAGE_WORKER_NICE": str(n)}

    t_start = time.time()
    wall, summary = _cli(data, "index", "update", "-q", "--json", env=nice_env(0))
    t_end = time.time()
    during = load.between(t_start, t_end)
    windows = [((idle_end - 15, idle_end), (t_start, t_end), nices[0], wall)]
    probe = make_query(read_bgr(held[0]), TRANSFORMS["jpeg30"], transform_rng(seed, 0, "x"))
    visible_s = None
    deadline = time.time() + 60
    while time.time() < deadline:
        res = search.query_bytes(probe, k=1)
        if res.matches and res.matches[0].url == urls[held[0].name]:
            visible_s = time.time() - t_end
            break
        time.sleep(0.05)
    time.sleep(5)
    after = load.between(t_end + 3, time.time())
    added = [folder / p.name for p in held]
    for r in range(1, update_rounds):  # the same kind of update again: other changes
        time.sleep(10)
        idle_end = time.time()
        for f in added:  # 100 removed: the last round's new images
            f.unlink()
        added = []
        for p in held:  # 100 new: other versions of the held-out photos
            added.append(folder / f"r{r}-{p.name}")
            _write_crop(p, added[-1], 88, top=(r % 4) / 40)
        for p in catalogue[:100]:  # 100 changed: another crop in place
            _write_crop(p, folder / p.name, 85, margin=(1 + r % 7) / 40)
        t0 = time.time()
        secs, _ = _cli(data, "index", "update", "-q", "--json", env=nice_env(r))
        windows.append(((idle_end - 10, idle_end), (t0, time.time()), nices[r % len(nices)],
                        secs))
        log(f"update round {r + 1}: {secs:.1f}s wall; query p95 idle "
            f"{load.between(*windows[-1][0])['p95_ms']:.0f} ms, during "
            f"{load.between(*windows[-1][1])['p95_ms']:.0f} ms")
    load.finish()
    rounds = [{"worker_nice": n, "wall_s": secs, "idle": load.between(*i),
               "during_update": load.between(*d)} for i, d, n, secs in windows]
    by_nice = {}
    for n in dict.fromkeys(nices):
        idle_n = load.within([i for i, _, m, _ in windows if m == n])
        during_n = load.within([d for _, d, m, _ in windows if m == n])
        by_nice[str("setting" if n is None else n)] = {
            "rounds": sum(1 for *_, m, _ in windows if m == n), "idle": idle_n,
            "during_update": during_n,
            "p95_ratio": during_n["p95_ms"] / idle_n["p95_ms"] if idle_n["p95_ms"] else None}
    result["update_100_100_100"] = {
        "wall_s": wall, "update_s": summary["seconds"], "counts": summary["counts"],
        "processed": summary["processed"], "worker_cpu_s": summary["cpu_seconds"],
        "index": summary["index"], "startup_s": result["one_image_update"]["startup_s"],
        "idle": idle, "during_update": during, "after_update": after,
        "new_state_answered_after_s": visible_s, "errors": load.errors[:5],
        "error_count": len(load.errors), "rounds": rounds, "by_worker_nice": by_nice}
    log(f"update 100/100/100: {wall:.1f}s wall ({summary['index']['action']} in "
        f"{summary['index']['seconds']:.2f}s); query p95 idle {idle['p95_ms']:.0f} ms, "
        f"during {during['p95_ms']} ms; new state answered {visible_s}s after")

    # --- stage 3: ten 2% updates, then recall against a full rebuild --------------------------
    growth = []
    start = pad
    step = entries // 50
    from echoimage.index.build import update_index_files

    for n in range(10):
        t0 = time.perf_counter()
        add_derived_rows(engine, start, step, seed=seed + 1 + n)
        start += step
        rows_s = time.perf_counter() - t0
        report = update_index_files(settings, engine)
        growth.append({"rows_s": rows_s, **report.as_dict()})
        log(f"growth update {n + 1}: {report.action} in {report.seconds:.2f}s")
    kept = catalogue[200:200 + recall_photos]
    qs = _queries(kept, list(TRANSFORMS), seed + 7)
    kept_urls = [urls[p.name] for p in kept]
    live = search_engine(settings)
    incremental = _recall(live, qs, kept_urls, log, "incremental")
    t0 = time.perf_counter()
    rebuilt2 = rebuild_index_files(settings, engine, "benchmark: fresh rebuild to compare")
    rebuild2_s = time.perf_counter() - t0
    fresh = _recall(search_engine(settings), qs, kept_urls, log, "rebuilt")
    diffs = {k: round(100 * (incremental[k] - fresh[k]), 2) for k in incremental}
    result["growth"] = {"updates": growth, "incremental_recall": incremental,
                        "rebuilt_recall": fresh, "difference_points": diffs,
                        "max_abs_difference_points": max(abs(v) for v in diffs.values()),
                        "rebuild_s": rebuild2_s, "rebuild": rebuilt2.as_dict(),
                        "queries": len(qs)}
    result["peak_rss_mb"] = self_peak_rss_mb()
    engine.dispose()
    (out_dir / "live.json").write_text(json.dumps(result, indent=2, default=str))
    log(f"done: written to {out_dir / 'live.json'}")
    return result
