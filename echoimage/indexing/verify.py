"""`index verify`: check that the store and the index files agree, and repair what does not.

The index files include the store's changes up to their change number. Every image the
store had indexed by then must be in the index exactly once, with its pHash and one local
entry per indexed keypoint, and nothing else may be; rows changed after that number are
brought in by the next update and are only counted. Store rows that contradict themselves
(an indexed image without features, features of an image that is not indexed) are
repaired in the store; anything wrong with the index files is repaired by rebuilding them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Engine

from echoimage.config import Settings
from echoimage.errors import EchoImageError
from echoimage.index.binary import IndexFileDamaged, codes_of
from echoimage.index.build import load_parts, misfit, rebuild_index_files, snapshot
from echoimage.index.local import LocalParams, probes
from echoimage.index.manifest import read_manifest
from echoimage.index.parts import PartSet
from echoimage.store import repo
from echoimage.store.db import is_readonly, session_factory

#: ids listed at most per problem in the report
SAMPLE = 10
MISSING = "indexed in the store but missing from the index"
EXTRA = "in the index but not indexed in the store"
TWICE = "in the index more than once"
WRONG_HASH = "with another pHash in the index than in the store"
WRONG_LOCAL = "with another number of local entries than their keypoints"
#: problems of the index files (the others are problems of the store's rows)
INDEX_PROBLEMS = frozenset({MISSING, EXTRA, TWICE, WRONG_HASH, WRONG_LOCAL})


@dataclass
class VerifyReport:
    """What verification found, and what it repaired (or would repair)."""

    store_seq: int = 0
    index_seq: int | None = None
    store_indexed: int = 0
    index_images: int = 0
    later_changes: int = 0  # rows changed after the index's change number (not errors)
    problems: dict[str, list[int]] = field(default_factory=dict)  # problem → ids (sample)
    counts: dict[str, int] = field(default_factory=dict)  # problem → how many
    files: str | None = None  # why the index files cannot be used, if they cannot
    repaired: list[str] = field(default_factory=list)
    would_repair: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when nothing was wrong, or everything wrong was repaired."""
        return bool(self.repaired) or not (self.counts or self.files)

    def add(self, problem: str, ids: list[int] | np.ndarray) -> None:
        ids = [int(i) for i in ids]
        if ids:
            self.counts[problem] = len(ids)
            self.problems[problem] = ids[:SAMPLE]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"ok": self.ok, "store_seq": self.store_seq, "index_seq": self.index_seq,
                "store_indexed": self.store_indexed, "index_images": self.index_images,
                "later_changes": self.later_changes, "files": self.files,
                "problems": {k: {"count": self.counts[k], "ids": v}
                             for k, v in self.problems.items()},
                "repaired": self.repaired, "would_repair": self.would_repair,
                "seconds": round(self.seconds, 3)}


def _compare(report: VerifyReport, pset: PartSet, rows: list[repo.IndexedRow],
             index_seq: int, per_image: int) -> None:
    """Index entries against the store's indexed rows as of index_seq."""
    known = [r for r in rows if r.seq <= index_seq and r.phash is not None]
    expected = np.array([r.id for r in known], np.int64)
    live = pset.live_ids()
    report.index_images = len(live)
    dup = []
    for part in pset.parts:
        ids = np.sort(codes_of(part.hashes)[0])
        dup.extend(ids[1:][np.diff(ids) == 0].tolist())
    report.add(TWICE, sorted(set(dup)))
    # rows changed after the index's change number may or may not be in it yet
    later = {r.id for r in rows if r.seq > index_seq}
    extra = np.setdiff1d(live, expected)
    report.add(EXTRA,
               [i for i in extra.tolist() if i not in later])
    report.add(MISSING,
               np.setdiff1d(expected, live).tolist())
    stored = {r.id: r.phash for r in known}
    wrong_hash = []
    for part, shadow in zip(pset.parts, pset.shadowed, strict=True):
        ids, codes = codes_of(part.hashes)
        for i, code in zip(ids.tolist(), codes, strict=True):
            if i in stored and i not in shadow and bytes(code) != stored[i]:
                wrong_hash.append(i)
    report.add(WRONG_HASH, sorted(wrong_hash))
    ids, counts = np.unique(pset.live_local_ids(), return_counts=True)
    have = dict(zip(ids.tolist(), counts.tolist(), strict=True))
    wrong_local = [r.id for r in known if have.get(r.id, 0) != min(per_image, r.n_keypoints)]
    report.add(WRONG_LOCAL, wrong_local)


def verify_index(settings: Settings, store: Engine, repair: bool) -> VerifyReport:
    """Check the store and the index files against each other; repair unless told not to."""
    t0 = time.perf_counter()
    report = VerifyReport()
    with snapshot(store) as session:
        state = repo.store_state(session)
        rows = repo.indexed_rows(session)
        orphans = repo.orphan_feature_ids(session)
    report.store_seq, report.store_indexed = state.seq, state.count
    broken = [r.id for r in rows if r.phash is None]
    report.add("indexed in the store without features", broken)
    report.add("not indexed but with features in the store", orphans)
    manifest = read_manifest(settings.index_dir)
    if manifest is None:
        report.files = "there is no index"
    else:
        report.index_seq = manifest.seq
        report.files = misfit(manifest, state, settings)
        if report.files is None:
            try:
                parts, quantizer = load_parts(settings.index_dir, manifest)
                lp = LocalParams.from_settings(settings)
                pset = PartSet(parts, quantizer, probes(quantizer, lp))
                report.later_changes = sum(1 for r in rows if r.seq > manifest.seq)
                _compare(report, pset, rows, manifest.seq, settings.local_per_image)
            except IndexFileDamaged as exc:
                report.files = str(exc)
    store_fix = []
    if broken:
        store_fix.append(f"send {len(broken)} indexed images without features back to "
                         "pending (indexed again by the next update)")
    if orphans:
        store_fix.append(f"drop the features of {len(orphans)} images that are not "
                         "indexed")
    index_wrong = report.files is not None or bool(set(report.counts) & INDEX_PROBLEMS)
    # a store repair changes rows the index holds: the index is rebuilt after it
    actions = store_fix + (["rebuild the index files from the store"]
                           if index_wrong or store_fix else [])
    if not repair:
        report.would_repair = actions
    elif actions:
        if is_readonly(store):
            raise EchoImageError("the store is read-only: `index verify` found problems "
                                 "it cannot repair here (run it where the store can be "
                                 "written, or with --dry-run)")
        if store_fix:
            with session_factory(store).begin() as s:
                repo.requeue(s, broken, "requeued by index verify: features were missing")
                repo.drop_features(s, orphans)
        rebuild_index_files(settings, store, "index verify found problems")
        report.repaired = actions
    report.seconds = time.perf_counter() - t0
    return report
