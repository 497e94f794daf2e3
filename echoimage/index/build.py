"""Building, maintaining and loading the index files: the one writer of the index directory.

`update_index_files` is what every build, update and catalogue change ends with: the rows
the store changed after the manifest's change number become a new segment (added, changed
and gone images; no retraining, no rewrite of the base). Segments are merged with each other
when there are too many, and into a new base (a compaction: no retraining either, the codes
are moved list by list) when they hold a large share of the catalogue. The IVF quantizer is
retrained only when it no longer fits the data: the catalogue has grown `RETRAIN_GROWTH`
times since training, or the last compaction measured lists too uneven. A full rebuild
(`rebuild_index_files`, `echoimage index rebuild`) is always possible from the store.

Writers hold an exclusive lock on the index directory; readers never lock: they read the
manifest, then the files it names (files are never rewritten, only replaced by new names).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from sqlalchemy import Engine

from echoimage.config import Settings
from echoimage.index.binary import (
    IndexFileDamaged,
    build_binary_index,
    codes_of,
    read_index_file,
    write_index_file,
)
from echoimage.index.local import (
    DESC_BYTES,
    LAYOUT,
    TRAIN_PER_LIST,
    LocalParams,
    empty_part,
    local_part,
    nlist_for,
    probes,
    quantizer_of,
    train_quantizer,
)
from echoimage.index.manifest import (
    MANIFEST_NAME,
    FileRef,
    IndexManifest,
    Layout,
    PartInfo,
    atomic_write_bytes,
    ensure_index_dir,
    file_sha256,
    read_manifest,
    write_manifest,
)
from echoimage.index.parts import ListMemo, Part, PartSet
from echoimage.store import repo
from echoimage.store.db import head_revision, index_revision, session_factory

log = logging.getLogger(__name__)

#: segments past which they are merged (into one segment, or with the base)
MAX_SEGMENTS = 8
#: segments holding more than this share of the base's images are merged into a new base
COMPACT_SHARE = 0.25
#: retrain when the catalogue holds this many times the descriptors the quantizer was
#: trained for (the ideal list count has doubled: 2·√n)
RETRAIN_GROWTH = 4.0
#: retrain when the lists have become this much more uneven than they were when trained
#: (FAISS's imbalance factor, measured at training and at each compaction: 1.5 on the
#: benchmark's photos when trained; data unlike the training sample piles into few lists)
IMBALANCE_GROWTH = 1.5
#: a change of more than this share of the catalogue is rebuilt rather than segmented
REBUILD_SHARE = 0.5
#: local-index parts of more descriptors than this are memory-mapped by searching
#: processes (FAISS reads a binary IVF file with IO_FLAG_MMAP as on-disk inverted lists)
MMAP_FROM = 1_000_000

_OUR_FILES = re.compile(r"^(base-|seg-|quantizer-|\..*\.tmp$)|^(phash|orb-local)\.faissbin")


class IndexAction(StrEnum):
    """What an index update did."""

    UNCHANGED = "unchanged"
    SEGMENT = "segment"
    MERGED = "merged-segments"
    COMPACTED = "compacted"
    REBUILT = "rebuilt"


@dataclass(frozen=True)
class IndexReport:
    """The outcome of one index update or rebuild."""

    action: IndexAction
    seq: int
    images: int
    segments: int
    seconds: float
    changed: int = 0  # store rows the update took in
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"action": str(self.action), "seq": self.seq, "images": self.images,
                "segments": self.segments, "seconds": round(self.seconds, 3),
                "changed": self.changed, "reason": self.reason}


def index_params(settings: Settings) -> dict[str, Any]:
    """What index files must have been built for to serve these settings."""
    return {"per_image": settings.local_per_image, "layout": LAYOUT, "hash_bits": 64}


@contextlib.contextmanager
def writer_lock(directory: Path) -> Iterator[None]:
    """The index directory's exclusive writer lock (held until the block ends)."""
    ensure_index_dir(directory)
    with open(directory / ".writer.lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def misfit(manifest: IndexManifest, state: repo.StoreState, settings: Settings) -> str | None:
    """Why index files cannot serve this store and these settings (None: they can)."""
    if manifest.store_id != state.store_id:
        return "they were built from another store"
    if manifest.seq > state.seq:
        return ("they are newer than the store (as after restoring an older backup of "
                "the store)")
    built_for = index_revision(manifest.schema_revision)
    if built_for is None or built_for != index_revision():
        return "they were built for another schema revision"
    if manifest.params != index_params(settings):
        return "they were built with other parameters"
    return None


# --- reading -------------------------------------------------------------------------------------

def _read_touched(directory: Path, ref: FileRef) -> np.ndarray:
    path = directory / ref.name
    try:
        if file_sha256(path) != ref.sha256:
            raise IndexFileDamaged(f"{path} does not match its checksum in the manifest")
        return np.load(path, allow_pickle=False).astype(np.int64)
    except OSError as exc:
        raise IndexFileDamaged(f"cannot read {path} ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise IndexFileDamaged(f"{path} cannot be read ({exc})") from None


def read_part(directory: Path, info: PartInfo, mmap: bool = False) -> Part:
    """One part from its files (checksums checked); IndexFileDamaged says why not.

    mmap: the local index's inverted lists are mapped from the file, not copied into the
    process (read-only: for searching; pages the kernel can drop and share between
    processes)."""
    hashes = read_index_file(directory, info.files["hash"])
    local = read_index_file(directory, info.files["local"], mmap=mmap and info.descriptors
                            > MMAP_FROM)
    touched = _read_touched(directory, info.files["touched"])
    if hashes.ntotal != info.images or local.ntotal != info.descriptors:
        raise IndexFileDamaged(f"part {info.name} holds other entries than its manifest says")
    return Part(info.name, info.seq, hashes, local, touched)


def read_quantizer(directory: Path, manifest: IndexManifest) -> faiss.IndexBinary | None:
    """The trained quantizer of an IVF index (None for a flat one)."""
    if manifest.layout != Layout.IVF:
        return None
    assert manifest.trained is not None
    return read_index_file(directory, FileRef(**manifest.trained["file"]))


def load_parts(directory: Path, manifest: IndexManifest,
               cache: dict[str, Part] | None = None, mmap: bool = False
               ) -> tuple[tuple[Part, ...], faiss.IndexBinary | None]:
    """Every part of the manifest (those in cache reused: parts never change under a name)
    and the quantizer; mmap: large IVF parts mapped, not read (see read_part).
    IndexFileDamaged when a file is missing or damaged."""
    cache = cache or {}
    parts = tuple(cache[i.name] if i.name in cache else read_part(directory, i, mmap)
                  for i in manifest.parts)
    quantizer = None
    if manifest.layout == Layout.IVF:
        quantizer = quantizer_of(parts[0].local)
    return parts, quantizer


# --- writing -------------------------------------------------------------------------------------

def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_part(directory: Path, part: Part, from_seq: int) -> PartInfo:
    """Write a part's three files and describe them."""
    files = {"hash": write_index_file(part.hashes, directory / f"{part.name}.hash.faissbin"),
             "local": write_index_file(part.local, directory / f"{part.name}.local.faissbin")}
    buf = io.BytesIO()
    np.save(buf, part.touched.astype(np.int64), allow_pickle=False)
    path = directory / f"{part.name}.touched.npy"
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    files["touched"] = FileRef(path.name, hashlib.sha256(data).hexdigest(), len(data))
    return PartInfo(part.name, from_seq, part.seq, int(part.hashes.ntotal),
                    int(part.local.ntotal), len(part.touched), files)


def collect_garbage(directory: Path, keep: set[str]) -> None:
    """Remove index files no manifest names any more (a reader that still has one open
    keeps reading it; one that opens it too late reads the new manifest and retries)."""
    keep = keep | {MANIFEST_NAME, ".writer.lock"}
    for path in directory.iterdir():
        if path.name not in keep and _OUR_FILES.match(path.name):
            with contextlib.suppress(OSError):
                path.unlink()


@dataclass
class _Rows:
    """Rows read from the store for a part: pHashes and local descriptors."""

    ids: np.ndarray
    codes: np.ndarray
    local_ids: np.ndarray
    descs: np.ndarray
    touched: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    #: per image of ids, when read as changed rows: its change number and its descriptors
    seqs: np.ndarray | None = None
    counts: np.ndarray | None = None


@contextlib.contextmanager
def snapshot(engine: Engine) -> Iterator[Any]:
    """A session whose reads all see one snapshot of the store (SQLite: an explicit read
    transaction, which the driver does not open for SELECTs by itself; PostgreSQL:
    REPEATABLE READ)."""
    if engine.dialect.name == "sqlite":
        with session_factory(engine)() as session:
            session.connection().exec_driver_sql("BEGIN")
            try:
                yield session
            finally:
                session.rollback()
        return
    bind = engine.execution_options(isolation_level="REPEATABLE READ")
    with session_factory(bind)() as session:
        yield session


#: stores of more images than this estimate their descriptor count from the training
#: sample instead of reading every features row for it
EXACT_COUNT_MAX = 20_000


def training_sample(session: Any, ids: np.ndarray, per_image: int, want: int,
                    seed: int = 0) -> tuple[np.ndarray, float]:
    """Descriptors to train the quantizer on: the local prefixes of as many random images
    as a sample of `want` needs eight times over (every image when that is all of them;
    train_quantizer draws its sample from these), and their mean count per image."""
    rng = np.random.default_rng(seed)
    n = min(len(ids), max(1, -(-8 * want // max(1, per_image))))
    chosen = np.sort(rng.choice(ids, size=n, replace=False)) if n < len(ids) else ids
    blobs = repo.descriptors_of(session, chosen.tolist(), per_image)
    descs = np.frombuffer(b"".join(blobs[int(i)] for i in chosen if int(i) in blobs),
                          np.uint8).reshape(-1, DESC_BYTES)
    return descs, len(descs) / max(1, len(chosen))


def _whole(engine: Engine, lp: Any, name: str, quantizer: faiss.IndexBinary | None
           ) -> tuple[repo.StoreState, Part, faiss.IndexBinary | None]:
    """The whole store as one part, from one snapshot: the quantizer (the one given, or
    trained on a sample when the descriptors are too many for a flat index, else None) and
    the descriptors added piece by piece."""
    with snapshot(engine) as session:  # one transaction: one snapshot
        state = repo.store_state(session)
        ids, codes = repo.indexed_hashes(session)
        # the exact count decides flat or IVF for small stores; a large one is IVF and
        # sizes its lists by an estimate from the training sample
        total = repo.local_descriptor_count(session, lp.per_image) \
            if len(ids) <= EXACT_COUNT_MAX else None
        if quantizer is None and (total is None or total > lp.flat_max):
            bound = total if total is not None else len(ids) * lp.per_image
            sample, mean = training_sample(session, ids, lp.per_image,
                                           TRAIN_PER_LIST * nlist_for(bound, lp))
            if total is None:
                total = round(mean * len(ids))
            if total > lp.flat_max:
                quantizer = train_quantizer(sample, lp, total=total)
            del sample
        local = stored_local(session, lp.per_image, quantizer)
    part = Part(name, state.seq, build_binary_index(ids, codes), local, np.zeros(0, np.int64))
    return state, part, quantizer


def stored_local(session: Any, per_image: int, quantizer: faiss.IndexBinary | None,
                 keep: Callable[[np.ndarray], np.ndarray] | None = None) -> faiss.IndexBinary:
    """A local index of every indexed image's stored descriptor prefix (or of those whose
    ids keep(ids) selects), added piece by piece."""
    local = empty_part(quantizer)
    for lids, ldescs in repo.iter_local_descriptors(session, per_image):
        if keep is not None:
            m = keep(lids)
            lids, ldescs = lids[m], np.ascontiguousarray(ldescs[m])
        if len(lids):
            local.add_with_ids(ldescs, lids)
    return local


def rows_part(name: str, seq: int, rows: _Rows, quantizer: faiss.IndexBinary | None,
              memo: ListMemo | None = None) -> Part:
    """A part holding these rows (IVF over the quantizer, or flat); memo: the lists of the
    rows it saw before are taken from it (changed rows only)."""
    lists = None
    if memo is not None and quantizer is not None and rows.seqs is not None \
            and rows.counts is not None:
        keys = list(zip(rows.ids.tolist(), rows.seqs.tolist(), strict=True))
        lists = memo.lists(quantizer, keys, rows.counts, rows.descs)
    return Part(name, seq, build_binary_index(rows.ids, rows.codes),
                local_part(rows.local_ids, rows.descs, quantizer, lists), rows.touched)


def changed_rows(session: Any, after: int, per_image: int) -> tuple[list[repo.ChangedImage],
                                                                  _Rows]:
    """The rows changed after change number `after`, as a part's rows (touched: all of
    them; pHashes and descriptors: those indexed now)."""
    changed = repo.changed_since(session, after, None)
    assert changed is not None
    live = [c for c in changed if c.indexed and c.phash is not None]
    descs = repo.descriptors_of(session, [c.id for c in live], per_image)
    ids = np.array([c.id for c in live], np.int64)
    codes = np.frombuffer(b"".join(c.phash for c in live), np.uint8).reshape(-1, 8)
    blobs = [descs.get(c.id, b"") for c in live]
    counts = np.array([len(b) // DESC_BYTES for b in blobs], np.int64)
    lids = np.repeat(ids, counts)
    arr = np.frombuffer(b"".join(blobs), np.uint8).reshape(-1, DESC_BYTES)
    touched = np.array(sorted(c.id for c in changed), np.int64)
    seqs = np.array([c.seq for c in live], np.int64)
    return changed, _Rows(ids, codes, lids, arr, touched, seqs, counts)


def _rebuild(settings: Settings, engine: Engine, reason: str, t0: float,
             previous: IndexManifest | None,
             quantizer: faiss.IndexBinary | None = None) -> IndexReport:
    """A full build from one snapshot of the store (caller holds the writer lock), with a
    new quantizer trained on it, or the one given (to compare with an incremental index)."""
    lp = LocalParams.from_settings(settings)
    directory = settings.index_dir
    gen = time.time_ns()
    state, base, quantizer = _whole(engine, lp, f"base-{gen}", quantizer)
    ivf = quantizer is not None
    ids, local = base.ids, base.local
    info = write_part(directory, base, 0)
    trained = last_retrain = None
    if quantizer is not None:
        ref = write_index_file(quantizer, directory / f"quantizer-{gen}.faissbin")
        trained = {"descriptors": int(local.ntotal), "images": int(len(ids)),
                   "nlist": int(quantizer.ntotal), "seq": state.seq, "at": _now(),
                   "file": ref.__dict__,
                   "imbalance": round(float(base.local.invlists.imbalance_factor()), 3)}
        last_retrain = {"at": _now(), "seq": state.seq, "reason": reason,
                        "seconds": round(time.perf_counter() - t0, 3)}
    elif previous is not None:
        last_retrain = previous.last_retrain
    manifest = IndexManifest(
        store_id=state.store_id, seq=state.seq, schema_revision=head_revision(),
        images=state.count, params=index_params(settings),
        layout=Layout.IVF if ivf else Layout.FLAT, base=info, trained=trained,
        last_retrain=last_retrain,
        last_compaction=previous.last_compaction if previous else None, updated_at=_now())
    write_manifest(directory, manifest)
    collect_garbage(directory, manifest.file_names())
    seconds = time.perf_counter() - t0
    log.info("index rebuilt (%s): %d images, %d descriptors, %s, in %.1f s", reason,
             state.count, local.ntotal, f"IVF {quantizer.ntotal} lists" if quantizer
             is not None else "flat", seconds)
    return IndexReport(IndexAction.REBUILT, state.seq, state.count, 0, seconds,
                       reason=reason)


def rebuild_index_files(settings: Settings, engine: Engine, reason: str = "asked for",
                        quantizer: faiss.IndexBinary | None = None) -> IndexReport:
    """Rebuild the index from the store from scratch (retraining the quantizer, unless one
    is given)."""
    t0 = time.perf_counter()
    with writer_lock(settings.index_dir):
        return _rebuild(settings, engine, reason, t0, read_manifest(settings.index_dir),
                        quantizer)


def files_present(directory: Path, manifest: IndexManifest) -> str | None:
    """Why the manifest's files cannot be used, judged by their sizes (None: they can)."""
    refs = [r for p in manifest.parts for r in p.files.values()]
    if manifest.trained:
        refs.append(FileRef(**manifest.trained["file"]))
    for ref in refs:
        try:
            size = (directory / ref.name).stat().st_size
        except OSError:
            return f"its file {ref.name} is missing"
        if size != ref.bytes:
            return f"its file {ref.name} has been changed"
    return None


def _retrain_reason(manifest: IndexManifest, state: repo.StoreState, settings: Settings
                    ) -> str | None:
    """Why the quantizer no longer fits (None: it does)."""
    lp = LocalParams.from_settings(settings)
    per_image = manifest.base.descriptors / manifest.base.images if manifest.base.images \
        else float(lp.per_image)
    estimate = state.count * per_image
    if manifest.layout == Layout.FLAT:
        return "the index is flat (small): rebuilt whole" if estimate <= lp.flat_max \
            else "the catalogue outgrew the flat index"
    assert manifest.trained is not None
    trained = manifest.trained["descriptors"]
    if estimate > RETRAIN_GROWTH * trained:
        return (f"the catalogue grew to ~{estimate:,.0f} descriptors, over "
                f"{RETRAIN_GROWTH:g}x the {trained:,} the quantizer was trained on")
    if nlist_for(int(estimate), lp) < manifest.trained["nlist"] / 4:
        return "the catalogue shrank to a quarter of the lists' size"
    if nlist_for(int(estimate), lp) > 4 * manifest.trained["nlist"]:
        # an index trained before large catalogues had more, smaller lists
        return (f"the catalogue wants {nlist_for(int(estimate), lp):,} lists, over 4x the "
                f"{manifest.trained['nlist']:,} the quantizer has")
    trained_imbalance = manifest.trained.get("imbalance") or 1.0
    compaction = manifest.last_compaction or {}
    since_training = compaction.get("seq", -1) >= manifest.trained["seq"]
    imbalance = compaction.get("imbalance") if since_training else trained_imbalance
    if imbalance > IMBALANCE_GROWTH * trained_imbalance:
        return (f"its lists became too uneven (imbalance factor {imbalance:.2f}, "
                f"{trained_imbalance:.2f} when trained)")
    return None


def _merge(parts: tuple[Part, ...], quantizer: faiss.IndexBinary | None, name: str, seq: int,
           touched: np.ndarray) -> Part:
    """One part holding the live entries of parts (shadowed ones dropped), moved list by
    list without re-assigning or retraining."""
    pset = PartSet(parts, quantizer, 1)
    id_arrays, code_arrays = [], []
    local = None
    for part, shadow, gone in zip(parts, pset.shadowed, pset.superseded, strict=True):
        ids, codes = codes_of(part.hashes)
        keep = ~np.isin(ids, shadow)
        id_arrays.append(ids[keep])
        code_arrays.append(codes[keep])
        if len(gone):
            part.local.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(gone)))
        if local is None:
            local = part.local
        else:
            local.merge_from(part.local, 0)
    ids = np.concatenate(id_arrays)
    order = np.argsort(ids, kind="stable")
    hashes = build_binary_index(ids[order], np.concatenate(code_arrays)[order])
    assert local is not None
    return Part(name, seq, hashes, local, touched)


def update_index_files(settings: Settings, engine: Engine, retrain: bool = True
                       ) -> IndexReport:
    """Bring the index files up to the store's last change (see the module docstring).

    retrain=False (a flush in the middle of a build) leaves a quantizer that has become too
    small in place until the run's last update; a flat index outgrown is still trained."""
    t0 = time.perf_counter()
    directory = settings.index_dir
    with writer_lock(directory):
        manifest = read_manifest(directory)
        if manifest is None:
            return _rebuild(settings, engine, "there was no index", t0, None)
        with snapshot(engine) as session:
            state = repo.store_state(session)
            why = misfit(manifest, state, settings) or files_present(directory, manifest)
            if why:
                log.warning("the index files in %s cannot be used (%s): rebuilding them",
                            directory, why)
                return _rebuild(settings, engine, why, t0, manifest)
            if manifest.seq == state.seq:
                return IndexReport(IndexAction.UNCHANGED, state.seq, manifest.images,
                                   len(manifest.segments), time.perf_counter() - t0)
            why = _retrain_reason(manifest, state, settings)
            if why and (retrain or manifest.layout == Layout.FLAT):
                return _rebuild(settings, engine, why, t0, manifest)
            changed, rows = changed_rows(session, manifest.seq, settings.local_per_image)
        if len(changed) > REBUILD_SHARE * max(state.count, manifest.images):
            return _rebuild(settings, engine, f"{len(changed):,} images changed, more than "
                            f"{REBUILD_SHARE:.0%} of the catalogue", t0, manifest)
        try:
            quantizer = read_index_file(directory, FileRef(**manifest.trained["file"]))
        except IndexFileDamaged as exc:
            log.warning("%s: rebuilding the index", exc)
            return _rebuild(settings, engine, str(exc), t0, manifest)
        segment = rows_part(f"seg-{state.seq}-{time.time_ns()}", state.seq, rows, quantizer)
        info = write_part(directory, segment, manifest.seq)
        segments = (*manifest.segments, info)
        action = IndexAction.SEGMENT
        new = manifest.with_updates(seq=state.seq, images=state.count, segments=segments)
        if len(segments) > MAX_SEGMENTS:
            new, action = _consolidate(directory, new, quantizer)
        write_manifest(directory, new)
        collect_garbage(directory, new.file_names())
        seconds = time.perf_counter() - t0
        log.info("index updated to change %d (%s): %d rows changed, %d segments, %.2f s",
                 state.seq, action, len(changed), len(new.segments), seconds)
        return IndexReport(action, state.seq, state.count, len(new.segments), seconds,
                           changed=len(changed))


def _consolidate(directory: Path, manifest: IndexManifest, quantizer: faiss.IndexBinary
                 ) -> tuple[IndexManifest, IndexAction]:
    """Merge the segments into one, or (when they hold a large share of the catalogue)
    with the base into a new base: a compaction."""
    t0 = time.perf_counter()
    seg_images = sum(s.images + s.touched for s in manifest.segments)
    whole = seg_images > COMPACT_SHARE * max(1, manifest.base.images)
    infos = manifest.parts if whole else manifest.segments
    parts = tuple(read_part(directory, i) for i in infos)
    touched = np.unique(np.concatenate([p.touched for p in parts]))
    if whole:
        name = f"base-{time.time_ns()}"
        merged = _merge(parts, quantizer, name, manifest.seq, np.zeros(0, np.int64))
        info = write_part(directory, merged, 0)
        imbalance = round(float(merged.local.invlists.imbalance_factor()), 3)
        compaction = {"at": _now(), "seq": manifest.seq, "imbalance": imbalance,
                      "seconds": round(time.perf_counter() - t0, 3),
                      "segments": len(manifest.segments)}
        log.info("index compacted: %d segments merged into the base in %.1f s (list "
                 "imbalance %.2f)", len(manifest.segments), time.perf_counter() - t0,
                 imbalance)
        return manifest.with_updates(base=info, segments=(), last_compaction=compaction), \
            IndexAction.COMPACTED
    name = f"seg-{manifest.seq}-{time.time_ns()}-merged"
    merged = _merge(parts, quantizer, name, manifest.seq, touched)
    info = write_part(directory, merged, manifest.segments[0].from_seq)
    return manifest.with_updates(segments=(info,)), IndexAction.MERGED


def in_memory_index(settings: Settings, engine: Engine) -> tuple[PartSet, int]:
    """The whole index built in memory from the store (for a store that cannot be
    written); (parts, the change number they include)."""
    lp = LocalParams.from_settings(settings)
    state, part, quantizer = _whole(engine, lp, "memory", None)
    return PartSet((part,), quantizer, probes(quantizer, lp)), state.seq


def delta_part(session: Any, after: int, settings: Settings,
               quantizer: faiss.IndexBinary | None, memo: ListMemo | None = None
               ) -> tuple[Part | None, int]:
    """The store rows changed after change number `after` as one in-memory part (None if
    none), and the store's last change number, read in the same transaction; memo: the
    lists of the rows the last delta held (`ListMemo`)."""
    seq = repo.current_seq(session)
    if seq == after:
        return None, seq
    _, rows = changed_rows(session, after, settings.local_per_image)
    return rows_part(f"delta-{seq}", seq, rows, quantizer, memo), seq
