"""The de-duplication benchmark: transformed copies of a share of the photos planted among
the originals, then `find_duplicates` against the truth, beside the pHash-threshold way
(imagehash / imagededup: one orientation, a Hamming threshold, pairs joined into groups),
and the time per image at larger scales (padded with derived rows).

Each planted photo gets one copy: the main transforms in turn (the copies of the recall
benchmark), and a share of 60% crops at a random offset (found with `--crops` only).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from echoimage_bench.baselines import PHASH_THRESHOLD
from echoimage_bench.context import Log, build_catalogue, list_photos, read_bgr
from echoimage_bench.derived import add_derived_rows
from echoimage_bench.metrics import rate
from echoimage_bench.padding import copy_sqlite
from echoimage_bench.transforms import TRANSFORMS, make_query, transform_rng

CROP = "crop60_rand"


def _pairs_of_groups(groups: list[set[str]]) -> set[frozenset[str]]:
    return {frozenset((a, b)) for g in groups for a in g for b in g if a < b}


def _score(predicted: list[set[str]], truth: list[tuple[str, str, str]],
           leave_out: set[str] | None = None) -> dict[str, Any]:
    """Pair precision/recall (all, per transform), and groups exactly right; images in
    leave_out (copies scored elsewhere) take no part."""
    if leave_out:
        predicted = [g - leave_out for g in predicted]
    pred = _pairs_of_groups(predicted)
    true = {frozenset((a, b)) for a, b, _ in truth}
    hit = pred & true
    per = {}
    for a, b, name in truth:
        per.setdefault(name, []).append(frozenset((a, b)) in pred)
    group_of = {u: frozenset(g) for g in predicted for u in g}
    exact = [group_of.get(a) == frozenset((a, b)) for a, b, _ in truth]
    return {"pairs_predicted": len(pred), "pairs_true": len(true), "pairs_found": len(hit),
            "precision": len(hit) / len(pred) if pred else None,
            "recall": len(hit) / len(true) if true else None,
            "groups_exactly_right": rate(exact),
            "recall_per_transform": {k: rate(v) for k, v in per.items()}}


def _phash_groups(settings: Any, threshold: int = PHASH_THRESHOLD) -> tuple[list[set[str]],
                                                                           float]:
    """The imagededup way: stored pHashes, one orientation, pairs within threshold bits,
    joined into groups (union-find)."""
    import faiss

    from echoimage.index.binary import build_binary_index
    from echoimage.store import repo
    from echoimage.store.db import open_store, session_factory

    engine = open_store(settings, create=False)
    try:
        with session_factory(engine)() as s:
            ids, codes = repo.indexed_hashes(s)
            urls = {k.id: k.url for k in repo.known_images(s).values()}
    finally:
        engine.dispose()
    t0 = time.perf_counter()
    faiss.omp_set_num_threads(1)
    index = build_binary_index(ids, codes)
    lims, _, found = index.range_search(codes, threshold + 1)
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for n, i in enumerate(ids.tolist()):
        for j in found[lims[n]:lims[n + 1]].tolist():
            if j != i:
                ra, rb = find(i), find(j)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, set[str]] = {}
    for i in set(parent) | set(parent.values()):
        groups.setdefault(find(i), set()).add(urls[i])
    return [g for g in groups.values() if len(g) > 1], time.perf_counter() - t0


def run_dedupe_benchmark(photo_dir: str | Path, out_dir: str | Path, *, per_transform: int = 20,
                         crops: int = 40, scales: tuple[int, ...] = (10_000, 100_000),
                         crops_sample: int = 2000, seed: int = 0, progress: bool = True
                         ) -> dict[str, Any]:
    """Plant, dedupe, score; then time per image at each scale (writes dedupe.json)."""
    from echoimage.api import Catalogue
    from echoimage.config import Settings
    from echoimage.index.build import update_index_files
    from echoimage.search.dedupe import find_duplicates
    from echoimage.store.db import open_store

    log = Log(progress, "bench dedupe")
    out_dir = Path(out_dir)
    work = out_dir / "dedupe"
    shutil.rmtree(work, ignore_errors=True)
    folder = work / "catalogue"
    folder.mkdir(parents=True)
    photos = list_photos(Path(photo_dir))
    for p in photos:
        shutil.copy(p, folder / p.name)
    order = np.random.default_rng(seed).permutation(len(photos))
    main = [t for t in TRANSFORMS.values() if not t.extra]
    plan = [(int(order[n]), main[n % len(main)].name)
            for n in range(per_transform * len(main))]
    plan += [(int(order[len(plan) + n]), CROP) for n in range(crops)]
    truth = []
    for i, name in plan:
        img = read_bgr(photos[i])
        data = make_query(img, TRANSFORMS[name], transform_rng(seed, i, name))
        copy = folder / f"{photos[i].stem}__{name}.jpg"
        copy.write_bytes(data)
        truth.append((str((folder / photos[i].name).resolve()), str(copy.resolve()), name))
    data_dir = work / "data"
    settings = Settings(data_dir=data_dir)
    t0 = time.perf_counter()
    built = build_catalogue(settings, str(folder))
    log(f"{built.index_entries} images built in {time.perf_counter() - t0:.0f}s "
        f"({len(truth)} planted copies)")
    result: dict[str, Any] = {"photos": len(photos), "planted": len(truth),
                              "per_transform": per_transform, "crops": crops}
    main_truth = [t for t in truth if t[2] != CROP]
    crop_copies = {b for _, b, name in truth if name == CROP}
    for mode in (False, True):
        with Catalogue(settings) as catalogue:
            found = catalogue.dedupe(crops=mode)
        groups = [{m.url for m in g.members} for g in found.groups]
        key = "echoimage_crops" if mode else "echoimage"
        result[key] = {"main": _score(groups, main_truth, crop_copies),
                       "all": _score(groups, truth), **found.summary()}
        log(f"{key}: main P {result[key]['main']['precision']:.3f} R "
            f"{result[key]['main']['recall']:.3f}; crops R "
            f"{result[key]['all']['recall_per_transform'].get(CROP)}")
    groups, seconds = _phash_groups(settings)
    result["phash_baseline"] = {"threshold": PHASH_THRESHOLD, "seconds": seconds,
                                "main": _score(groups, main_truth, crop_copies),
                                "all": _score(groups, truth)}
    log(f"pHash baseline: main P {result['phash_baseline']['main']['precision']} R "
        f"{result['phash_baseline']['main']['recall']}")

    timing = {}
    prev = data_dir
    for scale in scales:
        d = work / f"scale-{scale}"
        d.mkdir()
        copy_sqlite(prev / "echoimage.sqlite3", d / "echoimage.sqlite3")
        s = Settings(data_dir=d)
        engine = open_store(s)
        have = _count(engine)
        tick = log.loop(f"padding to {scale:,}", scale - have)
        add_derived_rows(engine, have, scale - have, seed=seed + scale, progress=tick)
        update_index_files(s, engine)
        plain = find_duplicates(s, engine, False)
        from echoimage.search.dedupe import Deduper

        sample_ids = _sample_ids(engine, crops_sample, seed)
        t1 = time.perf_counter()
        sampled = Deduper(s, engine, crops=True, only=sample_ids).run()
        crops_s = time.perf_counter() - t1
        timing[str(scale)] = {"images": plain.images, **plain.summary(),
                              "crops_sample": len(sample_ids),
                              "crops_ms_per_image": round(1000 * crops_s / len(sample_ids), 3),
                              "crops_sample_groups": len(sampled.groups)}
        log(f"{scale:,}: {timing[str(scale)]['ms_per_image']:.2f} ms per image; with crops "
            f"{timing[str(scale)]['crops_ms_per_image']:.1f} ms per image (sample)")
        engine.dispose()
        prev = d
    result["scales"] = timing
    (out_dir / "dedupe.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _count(engine: Any) -> int:
    from echoimage.store import repo
    from echoimage.store.db import session_factory

    with session_factory(engine)() as s:
        return sum(repo.status_counts(s).values())


def _sample_ids(engine: Any, n: int, seed: int) -> set[int]:
    from echoimage.store import repo
    from echoimage.store.db import session_factory

    with session_factory(engine)() as s:
        ids, _ = repo.indexed_hashes(s)
    rng = np.random.default_rng(seed)
    return {int(i) for i in rng.choice(ids, size=min(n, len(ids)), replace=False)}
