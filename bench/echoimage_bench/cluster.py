"""The cluster benchmark: PostgreSQL and a Dask cluster beside SQLite and the local pool.

On this machine (its cores are all a cluster of it can use) it measures what the cluster
costs, not what it adds:

* **Build rate.** The same catalogue (`copies` copies of every photo) is built into
  a fresh PostgreSQL database by the local process pool and by a cluster of two `dask
  worker` processes (one thread each) beside a `dask scheduler`, alternately, `reps` times;
  rates are images processed per second of the run, medians, and their ratio.
* **Recall.** The scale benchmark's queries (its photos under every transform, held-out
  photos as negatives) answered from the SQLite store built locally and from the
  PostgreSQL store built on the cluster: recall@1 per transform and false matches, side by
  side.
* **Fan-out.** A SQLite copy of the catalogue store padded with derived rows to `entries`
  images: the vote search of the part-of-photo queries' descriptors on the whole index in
  the process, and fanned out to 2 and 4 shards held by actors on the cluster's workers;
  p50/p95 of each and the p50 overhead.

A PostgreSQL server is started for the run unless a database URL is given (its databases
are made and dropped by the benchmark).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from echoimage_bench.context import Log, build_catalogue, list_photos, search_engine


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def _test_support() -> Any:
    """The test suite's service launchers (tests/support: a PostgreSQL server, a Dask
    cluster); the cluster benchmark runs from a checkout."""
    import importlib
    import sys

    tests = Path(__file__).resolve().parents[2] / "tests"
    if not (tests / "support" / "pgserver.py").is_file():
        raise RuntimeError("the cluster benchmark runs from a checkout of EchoImage: "
                           f"{tests / 'support'} is missing")
    if str(tests) not in sys.path:
        sys.path.insert(0, str(tests))
    support = importlib.import_module("support")
    importlib.import_module("support.pgserver")
    importlib.import_module("support.daskcluster")
    return support


def run_cluster_benchmark(photo_dir: str | Path, out_dir: str | Path, *,
                          database_url: str | None = None, entries: int = 100_000,
                          reps: int = 3, copies: int = 3, photos: int = 400,
                          query_photos: int = 100, negatives: int = 50, seed: int = 0,
                          progress: bool = True) -> dict[str, Any]:
    """Run the cluster benchmark (see the module docstring); results also in
    out_dir/cluster.json and cluster.md."""
    from echoimage_bench.scale import answer_summary, make_queries, split_catalogue

    support = _test_support()
    DaskCluster = support.daskcluster.DaskCluster  # noqa: N806

    log = Log(progress, "bench cluster")
    out_dir = Path(out_dir)
    work = out_dir / "cluster-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cat_photos, held_out, catalogue = split_catalogue(photo_dir, photos, negatives, seed,
                                                      work / "catalogue")
    all_photos = list_photos(Path(photo_dir))
    many = work / "many"  # the build-rate catalogue: `copies` copies of every photo (files
    many.mkdir()          # of their own: a catalogue records a link as the file it names)
    for c in range(copies):
        for p in all_photos:
            shutil.copyfile(p, many / f"{c}-{p.name}")
    n_many = copies * len(all_photos)

    server = None
    if database_url is None:
        server = support.pgserver.start_server()
        log(f"PostgreSQL started on port {server.port}")
    dask = DaskCluster(2, log_dir=work)
    log(f"Dask scheduler and 2 workers at {dask.address}")
    result: dict[str, Any] = {"cpus": os.cpu_count(), "photos": len(cat_photos),
                              "build_images": n_many, "reps": reps, "entries": entries}
    made: list[str] = []

    def new_db() -> str:
        if server is not None:
            name = server.create_database()
            made.append(name)
            return server.url(name)
        assert database_url is not None
        return _fresh_schema(database_url, f"bench_{len(made)}", made)

    try:
        # --- build rate ---------------------------------------------------------------
        rates: dict[str, list[float]] = {"local": [], "cluster": []}
        for r in range(reps):
            for mode in ("local", "cluster"):
                rate = _build_rate(work / f"rate-{mode}-{r}", new_db(), many,
                                   dask.address if mode == "cluster" else None)
                rates[mode].append(rate)
                log(f"build {r + 1}/{reps} {mode}: {rate:.0f} images/s")
        med = {m: statistics.median(v) for m, v in rates.items()}
        result["build"] = {"rates": rates, "median": med,
                           "ratio": med["cluster"] / med["local"]}
        log(f"build: local {med['local']:.0f}, cluster {med['cluster']:.0f} images/s "
            f"({med['cluster'] / med['local']:.2f}x)")

        # --- recall: SQLite + local against PostgreSQL + cluster ----------------------------
        from echoimage.config import Settings

        qdir = work / "queries"
        queries = make_queries(cat_photos, catalogue, held_out, qdir, query_photos, seed)
        sqlite_settings = Settings(data_dir=work / "sqlite-local", database_url=None)
        build_catalogue(sqlite_settings, str(catalogue))
        pg_settings = Settings(data_dir=work / "pg-cluster", database_url=new_db(),
                               cluster=dask.address)
        build_catalogue(pg_settings, str(catalogue))
        result["recall"] = {}
        for name, s in (("sqlite+local", sqlite_settings),
                        ("postgresql+cluster", pg_settings.model_copy(
                            update={"cluster": None}))):
            answers = _answer(s, qdir, queries)
            summ = answer_summary(queries, answers)
            result["recall"][name] = summ
            log(f"{name}: whole R@1 {summ['whole']['recall_at_1']:.3f}, parts R@1 "
                f"{summ['parts']['recall_at_1']:.3f}, FMR "
                f"{summ['negatives']['false_match_rate']:.3f}")

        # --- fan-out of the vote search -------------------------------------------------------
        result["fanout"] = _fanout(sqlite_settings, work / "fanout", entries, dask, qdir,
                                   queries, seed, log)
    finally:
        dask.stop()
        if server is not None:
            server.stop()
        elif database_url is not None:
            _drop_schemas(database_url, made)
    (out_dir / "cluster.json").write_text(json.dumps(result, indent=2))
    (out_dir / "cluster.md").write_text(render_cluster_markdown(result))
    return result


def _fresh_schema(url: str, name: str, made: list[str]) -> str:
    """A database of its own on a server given by URL: a new database beside it."""
    from sqlalchemy import create_engine, make_url, text

    u = make_url(url)
    admin = create_engine(u, isolation_level="AUTOCOMMIT")
    db = f"{u.database}_{name}_{os.getpid()}"
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{db}"'))
        c.execute(text(f'CREATE DATABASE "{db}"'))
    admin.dispose()
    made.append(db)
    return u.set(database=db).render_as_string(hide_password=False)


def _drop_schemas(url: str, made: list[str]) -> None:
    from sqlalchemy import create_engine, make_url, text

    admin = create_engine(make_url(url), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        for db in made:
            c.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
    admin.dispose()


def _build_rate(data_dir: Path, url: str, folder: Path, cluster: str | None) -> float:
    """Images processed per second of one build of folder into the store at url."""
    from echoimage.config import Settings

    settings = Settings(data_dir=data_dir, database_url=url, cluster=cluster)
    summary = build_catalogue(settings, str(folder))
    return summary.processed / summary.seconds


def _answer(settings: Any, qdir: Path, queries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The top answer of every query (as the scale benchmark's serving probe records it)."""
    from echoimage_bench.scale import answer_queries

    engine = search_engine(settings, rebuild=True)
    out = answer_queries(engine, [(qdir / q["file"]).read_bytes() for q in queries], 1)
    engine.store.dispose()
    return out


def _fanout(catalogue_settings: Any, data_dir: Path, entries: int, dask: Any, qdir: Path,
            queries: list[dict[str, Any]], seed: int, log: Any) -> dict[str, Any]:
    """Vote search latency, whole index in the process against 2 and 4 shards."""
    import cv2
    from distributed import Client

    from echoimage.features.decode import decode_image
    from echoimage.features.orb import orb_features
    from echoimage.index.build import rebuild_index_files
    from echoimage.index.local import LocalParams
    from echoimage.search.shards import ShardedVotes
    from echoimage.store import repo
    from echoimage.store.db import open_store, session_factory
    from echoimage_bench.derived import add_derived_rows
    from echoimage_bench.padding import copy_sqlite

    data_dir.mkdir(parents=True, exist_ok=True)
    src = catalogue_settings.data_dir / "echoimage.sqlite3"
    copy_sqlite(src, data_dir / "echoimage.sqlite3")
    settings = catalogue_settings.model_copy(update={"data_dir": data_dir})
    engine = open_store(settings)
    with session_factory(engine)() as s:
        have = sum(repo.status_counts(s).values())
    t0 = time.perf_counter()
    if entries > have:
        add_derived_rows(engine, have, entries - have, seed=seed, workers=os.cpu_count() or 1)
    rebuild_index_files(settings, engine, "the cluster benchmark")
    engine.dispose()
    log(f"fan-out store: {entries:,} entries padded and indexed in "
        f"{time.perf_counter() - t0:.0f}s")
    search = search_engine(settings, rebuild=False)
    snap = search.live.current()
    lp = LocalParams.from_settings(settings)
    cv2.setNumThreads(1)
    descs = []
    for q in queries:
        if q["kind"] != "parts":
            continue
        img = decode_image((qdir / q["file"]).read_bytes(), settings.max_pixels,
                           settings.query_work_size)
        descs.append(orb_features(img.gray, settings.query_orb_features).descriptors)
    import faiss

    faiss.omp_set_num_threads(1)

    def timed(vote: Any) -> tuple[list[float], list[Any]]:
        ms, got = [], []
        for d in descs[:3]:
            vote(d)
        for d in descs:
            t = time.perf_counter()
            got.append(vote(d))
            ms.append((time.perf_counter() - t) * 1000)
        return ms, got

    out: dict[str, Any] = {"queries": len(descs), "entries": snap.size}
    whole_ms, whole = timed(lambda d: snap.parts.vote(d, lp, settings.vote_n))
    out["whole"] = {"p50": _pct(whole_ms, 50), "p95": _pct(whole_ms, 95)}
    log(f"fan-out: whole index p50 {out['whole']['p50']:.1f} ms")
    with Client(dask.address) as client:
        for n in (2, 4):
            sharded = ShardedVotes(client, settings, n)
            t = time.perf_counter()
            sharded.place(snap)
            place_s = time.perf_counter() - t
            ms, got = timed(lambda d, sh=sharded: sh.vote(snap, d, lp, settings.vote_n))
            same = sum(a == b for a, b in zip(got, whole, strict=True)) / max(1, len(got))
            out[f"shards_{n}"] = {"p50": _pct(ms, 50), "p95": _pct(ms, 95),
                                  "overhead_p50": _pct(ms, 50) - out["whole"]["p50"],
                                  "same_votes": same, "place_s": round(place_s, 1)}
            log(f"fan-out: {n} shards p50 {_pct(ms, 50):.1f} ms (+"
                f"{_pct(ms, 50) - out['whole']['p50']:.1f}), same votes {same:.3f}, "
                f"placed in {place_s:.0f}s")
            del sharded
            client.restart()  # drop the actors
    search.store.dispose()
    return out


def render_cluster_markdown(result: dict[str, Any]) -> str:
    """The cluster benchmark as Markdown tables."""
    b = result["build"]
    lines = [f"Build of {result['build_images']:,} images into PostgreSQL "
             f"(median of {result['reps']}):", "",
             "| | local process pool | Dask cluster, 2 workers | ratio |",
             "|---|---:|---:|---:|",
             f"| images/s | {b['median']['local']:.0f} | {b['median']['cluster']:.0f} | "
             f"{b['ratio']:.2f} |", ""]
    rec = result["recall"]
    names = list(rec)
    lines += [f"| recall@1 | {' | '.join(names)} |", "|---|" + "---:|" * len(names)]
    first = rec[names[0]]
    for kind in ("whole", "parts"):
        for t in first[kind]["recall_at_1_by_transform"]:
            lines.append(f"| {t} | " + " | ".join(
                f"{rec[n][kind]['recall_at_1_by_transform'][t]:.3f}" for n in names) + " |")
    lines.append("| false matches (held-out photos) | " + " | ".join(
        f"{rec[n]['negatives']['false_match_rate']:.3f}" for n in names) + " |")
    f = result["fanout"]
    lines += ["", f"Vote search of {f['queries']} part-of-photo queries at "
              f"{f['entries']:,} entries:", "",
              "| | p50 (ms) | p95 (ms) | p50 overhead (ms) | same votes |",
              "|---|---:|---:|---:|---:|",
              f"| whole index, in the process | {f['whole']['p50']:.1f} | "
              f"{f['whole']['p95']:.1f} | — | — |"]
    for n in (2, 4):
        s = f[f"shards_{n}"]
        lines.append(f"| {n} shards on the cluster | {s['p50']:.1f} | {s['p95']:.1f} | "
                     f"{s['overhead_p50']:+.1f} | {s['same_votes']:.3f} |")
    return "\n".join(lines) + "\n"
