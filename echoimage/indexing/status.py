"""`index status`: counts by status, the index (freshness, parts, training, compaction),
sizes and recent runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from echoimage.config import Settings
from echoimage.index.build import files_present, index_params, misfit
from echoimage.index.manifest import read_manifest
from echoimage.store import repo
from echoimage.store.db import session_factory


def status_report(settings: Settings, store: Engine) -> dict[str, Any]:
    """Everything `echoimage index status` shows, as a JSON-ready dict."""
    with session_factory(store)() as session:
        counts = repo.status_counts(session)
        state = repo.store_state(session)
        sizes = repo.storage_bytes(session)
        runs = repo.recent_runs(session)
        failures = repo.failure_reasons(session)
        sources = repo.list_sources(session)
    manifest = read_manifest(settings.index_dir)
    sizes.update(data_dir_size(settings))
    if sizes.get("images") and "store_file" in sizes:
        sizes["store_file_per_image"] = round(sizes["store_file"] / sizes["images"])
    if sizes.get("images"):
        sizes["index_files_per_image"] = round(sizes.get("index_files", 0) / sizes["images"])
    index: dict[str, Any] = {"entries": 0, "fresh": False, "store_indexed": state.count,
                             "store_seq": state.seq, "store_id": state.store_id,
                             "params": index_params(settings)}
    if manifest is not None:
        # by the files' sizes, as a query command's start judges them (`index verify`
        # reads every byte)
        why = misfit(manifest, state, settings) or files_present(settings.index_dir, manifest)
        index.update({
            "entries": manifest.images, "seq": manifest.seq,
            "fresh": why is None and manifest.seq == state.seq,
            "behind_by": state.seq - manifest.seq if why is None else None,
            "unusable": why, "layout": manifest.layout, "updated_at": manifest.updated_at,
            "trained": {k: v for k, v in (manifest.trained or {}).items() if k != "file"}
            or None,
            "base": {"images": manifest.base.images, "descriptors": manifest.base.descriptors,
                     "seq": manifest.base.seq},
            "segments": [{"images": s.images, "descriptors": s.descriptors,
                          "touched": s.touched, "from_seq": s.from_seq, "seq": s.seq}
                         for s in manifest.segments],
            # entries of older parts that segments replace or remove (dropped at compaction)
            "tombstones": sum(s.touched for s in manifest.segments),
            "last_retrain": manifest.last_retrain,
            "last_compaction": manifest.last_compaction,
        })
    return {
        "store": store.url.render_as_string(hide_password=True),
        "counts": counts,
        "index": index,
        "bytes": sizes,
        "sources": [{"uri": s.uri, "kind": s.kind}
                    | ({"follow_pages": s.follow_pages} if s.follow_pages is not None else {})
                    for s in sources],
        "runs": runs,
        "recent_failures": failures,
    }


def data_dir_size(settings: Settings) -> dict[str, int]:
    """Bytes on disk of the store file (SQLite) and the index directory."""
    out = {}
    db = settings.data_dir / "echoimage.sqlite3"
    if not settings.database_url and db.exists():
        out["store_file"] = sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))
    idx = Path(settings.index_dir)
    out["index_files"] = sum(p.stat().st_size for p in idx.glob("*") if p.is_file()) \
        if idx.exists() else 0
    return out
