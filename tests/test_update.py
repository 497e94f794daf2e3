"""`index update` on local files after the feature parameters changed: rows made with
other parameters are read again and extracted again, the rest stay as they are."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_catalogue
from helpers import build_index, update_index
from sqlalchemy import select

from echoimage.indexing.work import FeatureParams
from echoimage.store.db import open_store, session_factory
from echoimage.store.models import FeatureRow

pytestmark = pytest.mark.stores


def params_by_id(settings) -> dict[int, tuple[str | None, int]]:
    engine = open_store(settings)
    try:
        with session_factory(engine)() as s:
            return {r[0]: (r[1], r[2]) for r in s.execute(
                select(FeatureRow.image_id, FeatureRow.params, FeatureRow.n_keypoints))}
    finally:
        engine.dispose()


def test_local_update_re_extracts_only_rows_made_with_other_parameters(
        make_settings, tmp_path: Path) -> None:
    write_catalogue(tmp_path / "cat", ("astronaut", "coffee", "brick", "moon"))
    settings = make_settings()
    build_index(settings.model_copy(update={"orb_features": 300}), [str(tmp_path / "cat")],
                progress=False)
    before = params_by_id(settings)
    # one row as the current parameters would have made it: left alone
    current = FeatureParams.from_settings(settings).key
    keep = min(before)
    engine = open_store(settings)
    with session_factory(engine).begin() as s:
        s.execute(FeatureRow.__table__.update().where(FeatureRow.image_id == keep)
                  .values(params=current))
    engine.dispose()
    upd = update_index(settings, progress=False)
    assert dict(upd.counts) == {"re-extracted": 3, "unchanged": 1}, upd.as_dict()
    assert upd.processed == 3
    after = params_by_id(settings)
    assert {p for p, _ in after.values()} == {current}
    assert after[keep][1] == before[keep][1]  # not extracted again: still 300 keypoints
    assert all(after[i][1] > before[i][1] for i in after if i != keep)
    assert dict(update_index(settings, progress=False).counts) == {"unchanged": 4}
