"""`index status`: counts by status, index freshness, sizes and recent runs."""

from __future__ import annotations

from typing import Any

from echoimage.config import Settings
from echoimage.index.binary import INDEX_NAME, is_fresh
from echoimage.index.manifest import read_manifest
from echoimage.pipeline import data_dir_size
from echoimage.store import repo
from echoimage.store.db import head_revision, open_store, session_factory


def status_report(settings: Settings) -> dict[str, Any]:
    """Everything `echoimage index status` shows, as a JSON-ready dict."""
    engine = open_store(settings, create=False)
    with session_factory(engine)() as session:
        counts = repo.status_counts(session)
        state = repo.store_state(session)
        sizes = repo.storage_bytes(session)
        runs = repo.recent_runs(session)
        failures = repo.failure_reasons(session)
        sources = repo.list_sources(session)
    manifest = read_manifest(settings.index_dir / f"{INDEX_NAME}.json")
    fresh = manifest is not None and is_fresh(manifest, state, head_revision())
    sizes.update(data_dir_size(settings))
    return {
        "store": engine.url.render_as_string(hide_password=True),
        "counts": counts,
        "index": {"entries": manifest.ntotal if manifest else 0, "fresh": fresh,
                  "store_indexed": state.count,
                  "built_at": manifest.built_at if manifest else None},
        "bytes": sizes,
        "sources": [{"uri": u, "kind": k} for u, k in sources],
        "runs": runs,
        "recent_failures": failures,
    }
