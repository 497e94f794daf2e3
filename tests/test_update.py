"""`index update` on local files after the feature parameters changed: rows made with
other parameters are read again and extracted again, the rest stay as they are."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_catalogue
from helpers import (
    build_index,
    crop,
    jpeg,
    photo,
    search_engine,
    update_index,
    write,
)
from PIL import Image
from sqlalchemy import select

from echoimage.indexing.work import FeatureParams
from echoimage.store import repo
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


def test_an_image_that_failed_for_its_bytes_is_indexed_once_they_change(
        make_settings, tmp_path: Path) -> None:
    """A truncated photo or a text file named as an image fails for its bytes; a later build
    leaves it be (a known failure), an update checks it again: as it was, it stays a
    failure without being read (its file's marker is the same); fixed, it is indexed."""
    root = tmp_path / "photos"
    good = jpeg(photo("coffee"), 90)
    write(root / "coffee.jpg", good)
    broken = write(root / "rocket.jpg", jpeg(photo("rocket"), 90)[:3000])  # truncated
    notes = write(root / "notes.jpg", b"not a photo: the caption of rocket.jpg\n")
    settings = make_settings()
    first = build_index(settings, [str(root)], progress=False)
    assert dict(first.counts) == {"indexed": 1, "decode-error": 1, "not-an-image": 1}
    again = build_index(settings, [str(root)], progress=False)
    assert dict(again.counts) == {"already-indexed": 1, "known-failure": 2}
    same = update_index(settings, progress=False)
    assert dict(same.counts) == {"unchanged": 1, "skipped (decode-error)": 1,
                                 "skipped (not-an-image)": 1}, same.as_dict()
    assert same.processed == 0 and same.failures == []
    notes.write_bytes(notes.read_bytes())  # written again, the same bytes: read, not failed
    broken.write_bytes(jpeg(photo("rocket"), 90))  # the whole photo now
    fixed = update_index(settings, progress=False)
    assert dict(fixed.counts) == {"unchanged": 1, "indexed": 1,
                                  "skipped (not-an-image)": 1}, fixed.as_dict()
    assert fixed.failures == [] and fixed.index_entries == 2
    top = search_engine(settings).query_bytes(jpeg(crop(photo("rocket"), 0.7), 80),
                                              1).matches[0]
    assert top.url == str(broken.resolve()) and top.duplicate
    assert dict(update_index(settings, progress=False).counts) == {
        "unchanged": 2, "skipped (not-an-image)": 1}


def test_an_image_too_large_to_read_is_indexed_once_it_is_back(make_settings,
                                                               tmp_path: Path) -> None:
    """An indexed file that grows past max_bytes fails without being read: the validators
    and sha256 of the bytes indexed before are forgotten with it, so the same bytes back
    are indexed again (not taken for the failure, unchanged)."""
    root = tmp_path / "photos"
    good = jpeg(photo("coffee"), 90)
    f = write(root / "coffee.jpg", good)
    settings = make_settings(max_bytes=len(good) + 10)
    assert dict(build_index(settings, [str(root)], progress=False).counts) == {"indexed": 1}
    f.write_bytes(good + bytes(100))
    grown = update_index(settings, progress=False)
    assert dict(grown.counts) == {"too-large": 1}, grown.as_dict()
    f.write_bytes(good)
    back = update_index(settings, progress=False)
    assert dict(back.counts) == {"indexed": 1}, back.as_dict()
    assert back.index_entries == 1


def test_an_image_over_the_pixel_cap_is_indexed_once_the_cap_allows_it(
        make_settings, tmp_path: Path) -> None:
    """A photo refused over ECHOIMAGE_MAX_PIXELS stays refused, unread, while the cap is
    below its size (its file's marker unchanged); once the cap is raised to its size, the
    next update reads it again and indexes it (before, its unchanged bytes kept it
    refused for good). A cap lowered again leaves the indexed image as it is."""
    root = tmp_path / "photos"
    write(root / "coffee.jpg", jpeg(photo("coffee"), 90))  # 600x400
    big = write(root / "rocket.jpg", jpeg(photo("rocket"), 90))  # 640x427
    tight = make_settings(max_pixels=250_000)
    first = build_index(tight, [str(root)], progress=False)
    assert dict(first.counts) == {"indexed": 1, "too-large": 1}, first.as_dict()
    assert "640x427 = 273,280 pixels exceeds the cap of 250,000" in first.failures[0][2]
    same = update_index(tight, progress=False)
    assert dict(same.counts) == {"unchanged": 1, "skipped (too-large)": 1}, same.as_dict()
    assert same.processed == 0
    still = update_index(tight.model_copy(update={"max_pixels": 273_279}),
                         progress=False)
    assert dict(still.counts) == {"unchanged": 1, "skipped (too-large)": 1}, still.as_dict()
    assert still.processed == 0  # raised, but not to its size: not read
    raised = tight.model_copy(update={"max_pixels": 273_280})
    now = update_index(raised, progress=False)
    assert dict(now.counts) == {"unchanged": 1, "indexed": 1}, now.as_dict()
    assert now.failures == [] and now.index_entries == 2
    top = search_engine(raised).query_bytes(jpeg(crop(photo("rocket"), 0.7), 80),
                                            1).matches[0]
    assert top.url == str(big.resolve()) and top.duplicate
    assert dict(update_index(raised, progress=False).counts) == {"unchanged": 2}


def test_a_file_over_the_byte_cap_is_indexed_once_the_cap_allows_it(
        make_settings, tmp_path: Path) -> None:
    """A file over ECHOIMAGE_MAX_BYTES is refused unread; an update leaves it so without
    reading it while its marker and the cap stay, and indexes it once the cap allows
    its size."""
    root = tmp_path / "photos"
    data = jpeg(photo("rocket"), 90)
    big = write(root / "rocket.jpg", data)
    write(root / "coffee.jpg", jpeg(photo("coffee"), 40))
    tight = make_settings(max_bytes=len(data) - 1)
    first = build_index(tight, [str(root)], progress=False)
    assert dict(first.counts) == {"indexed": 1, "too-large": 1}, first.as_dict()
    same = update_index(tight, progress=False)
    assert dict(same.counts) == {"unchanged": 1, "skipped (too-large)": 1}, same.as_dict()
    assert same.processed == 0
    raised = tight.model_copy(update={"max_bytes": len(data)})
    now = update_index(raised, progress=False)
    assert dict(now.counts) == {"unchanged": 1, "indexed": 1}, now.as_dict()
    top = search_engine(raised).query_bytes(jpeg(crop(photo("rocket"), 0.7), 80),
                                            1).matches[0]
    assert top.url == str(big.resolve()) and top.duplicate


def test_an_image_over_twice_the_pixel_cap_is_indexed_once_the_cap_allows_it(
        make_settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over twice the cap, Pillow's own guard (which the feature workers set to the cap)
    refuses an image before its width and height are known: such a refusal is read again
    by each update, and indexed once the cap allows it."""
    root = tmp_path / "photos"
    write(root / "rocket.jpg", jpeg(photo("rocket"), 90))  # 640x427, over 2 x 130,000
    tight = make_settings(max_pixels=130_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 130_000)  # as agree_pillow_limit sets it
    first = build_index(tight, [str(root)], progress=False)
    assert dict(first.counts) == {"too-large": 1}, first.as_dict()
    assert first.failures[0][2] == ("image too large: 273,280 pixels exceeds the cap of "
                                    "130,000 (possible decompression bomb)")
    again = update_index(tight, progress=False)
    assert dict(again.counts) == {"too-large": 1}, again.as_dict()  # read again: unknown
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300_000)
    now = update_index(tight.model_copy(update={"max_pixels": 300_000}), progress=False)
    assert dict(now.counts) == {"indexed": 1}, now.as_dict()


def test_a_failure_too_large_for_the_store_columns_is_kept_as_at_least(
        make_settings, tmp_path: Path) -> None:
    """A file of 3 GB (sparse) is refused unread; its size does not fit PostgreSQL's
    32-bit column: the run records it as at least 2**31 - 1 bytes instead of failing."""
    root = tmp_path / "photos"
    write(root / "coffee.jpg", jpeg(photo("coffee"), 90))
    with open(root / "huge.jpg", "wb") as f:
        f.truncate(3_000_000_000)
    settings = make_settings()
    built = build_index(settings, [str(root)], progress=False)
    assert dict(built.counts) == {"indexed": 1, "too-large": 1}, built.as_dict()
    assert "3,000,000,000 bytes" in built.failures[0][2]
    engine = open_store(settings)
    try:
        with session_factory(engine)() as s:
            known = repo.known_images(s)[str((root / "huge.jpg").resolve())]
    finally:
        engine.dispose()
    assert known.nbytes == 2**31 - 1 and known.sha256 is None
    same = update_index(settings, progress=False)
    assert dict(same.counts) == {"unchanged": 1, "skipped (too-large)": 1}, same.as_dict()
