"""The public Python API (`echoimage.open` → `Catalogue`): every kind of query input,
verdicts and metadata, errors that lose nothing, and the README's example run as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import echoimage
from echoimage.errors import FetchError, QueryLimitError, SettingsError
from tests.helpers import REPO, crop, jpeg, photo, png, resize, synthetic, to_rgb, write

pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A catalogue folder with an images.json whose entries carry a sku and a title."""
    root = tmp_path_factory.mktemp("shop")
    entries = []
    for n, name in enumerate(("coffee", "rocket", "astronaut", "camera")):
        write(root / f"{name}.jpg", jpeg(to_rgb(photo(name))))
        entries.append({"url": f"{name}.jpg", "sku": f"SKU-{n}", "title": name.title()})
    (root / "images.json").write_text(json.dumps(entries))
    return root


@pytest.fixture(scope="module")
def catalogue(shop: Path, tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("api-data")
    with echoimage.open(data, workers=1) as cat:
        summary = cat.build(shop / "images.json")
        assert summary.counts["indexed"] == 4
        yield cat


def test_open_names_a_data_dir_or_a_database(tmp_path: Path) -> None:
    assert echoimage.open(tmp_path).settings.data_dir == tmp_path
    url = f"sqlite:///{tmp_path / 'x.sqlite3'}"
    assert echoimage.open(url).settings.database_url == url
    assert echoimage.open(tmp_path, max_k=7).settings.max_k == 7


def test_a_setting_that_is_not_one_is_refused(tmp_path: Path, monkeypatch) -> None:
    """A misspelt keyword would be dropped without a word: it is a SettingsError naming
    the setting meant; so is a negative number of workers (which the pool refused with a
    traceback), given or from the environment."""
    with pytest.raises(SettingsError) as typo:
        echoimage.open(tmp_path, colour_sensitve=True)
    assert str(typo.value) == "no setting is called 'colour_sensitve': did you mean " \
        "'colour_sensitive'?"
    with pytest.raises(SettingsError, match="workers: .*must not be negative"):
        echoimage.open(tmp_path, workers=-3)
    monkeypatch.setenv("ECHOIMAGE_WORKERS", "-3")
    with pytest.raises(SettingsError, match="workers: .*must not be negative"):
        echoimage.open(tmp_path)


def test_every_query_input_finds_the_same_copy(catalogue, shop: Path) -> None:
    rgb = resize(to_rgb(photo("rocket")), 0.6)
    path = write(shop.parent / "rocket-copy.png", png(rgb))
    inputs = [path, str(path), path.read_bytes(), rgb, Image.fromarray(rgb),
              np.ascontiguousarray(rgb[..., 0])]
    for given in inputs:
        res = catalogue.query(given, k=2)
        top = res.matches[0]
        assert top.url == str((shop / "rocket.jpg").resolve()), type(given)
        assert top.verdict == echoimage.Verdict.DUPLICATE and res.found
        assert top.metadata == {"sku": "SKU-1", "title": "Rocket"}
        assert res.copies == [top]
        assert res.image is not None and res.image.width == rgb.shape[1]


def test_verdicts(catalogue, shop: Path) -> None:
    """exact for the same bytes, partial for a small crop, different for an unrelated
    image, and "no copy found" when nothing is a copy."""
    exact = catalogue.query(shop / "coffee.jpg", k=1).matches[0]
    assert exact.verdict == "exact" and exact.exact
    part = catalogue.query(png(crop(to_rgb(photo("astronaut")), 0.5)), k=1).matches[0]
    assert part.verdict == "partial" and part.duplicate
    assert part.transform is not None and part.transform["covered_fraction"] < 0.5
    res = catalogue.query(png(synthetic(3)), k=3)
    assert not res.found and res.copies == []
    assert [m.verdict for m in res.matches] == ["different"] * 3
    assert res.to_dict()["found"] is False


def test_pairs_are_the_evidence_in_query_pixels(catalogue) -> None:
    rgb = to_rgb(photo("camera"))
    res = catalogue.query(np.ascontiguousarray(rgb[:, ::-1]), k=1)  # mirrored
    m = res.matches[0]
    assert m.orientation == "mirror" and m.pairs is not None
    assert len(m.pairs) == m.orb_inliers
    h, w = res.image.gray.shape
    assert (m.pairs[:, 0] >= 0).all() and (m.pairs[:, 0] < w).all()
    assert (m.pairs[:, 1] >= 0).all() and (m.pairs[:, 1] < h).all()
    # mirrored back: a query keypoint on the left pairs with one on the catalogue's right
    left = m.pairs[:, 0] < w * 0.3
    assert left.any() and (m.pairs[left, 2] > w * 0.5).mean() > 0.9


def test_bad_queries_are_one_line_errors_and_the_rest_goes_on(catalogue, tmp_path) -> None:
    missing = tmp_path / "missing.jpg"
    text = write(tmp_path / "notes.jpg", b"plain text " * 20)
    got = list(catalogue.query_many([missing, text, catalogue.settings.data_dir.parent]))
    good = tmp_path / "good.png"
    write(good, png(to_rgb(photo("coffee"))))
    got += list(catalogue.query_many([good]))
    errors = [r for _, r in got[:3]]
    assert all(isinstance(e, echoimage.EchoImageError) for e in errors)
    assert isinstance(errors[0], FetchError) and "no such file" in str(errors[0])
    assert all("\n" not in str(e) for e in errors)
    assert got[3][1].matches[0].verdict == "duplicate"
    with pytest.raises(QueryLimitError, match="max_k"):  # a ValueError too
        catalogue.query(good, k=catalogue.settings.max_k + 1)
    with pytest.raises(ValueError, match="not 0"):
        catalogue.query(good, k=0)
    # default_k results, or as many as the catalogue holds (4)
    assert len(catalogue.query(good).matches) == min(catalogue.settings.default_k, 4)
    with pytest.raises(TypeError, match="cannot query"):
        catalogue.query(3.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="uint8"):
        catalogue.query(np.zeros((10, 10), np.float32))


def test_status_dedupe_remove_and_image(catalogue, shop: Path) -> None:
    assert catalogue.status()["counts"] == {"indexed": 4}
    assert catalogue.dedupe().groups == []
    info = catalogue.image(1)
    assert info is not None and info["metadata"]["sku"].startswith("SKU-")
    assert catalogue.image(999) is None


def test_a_missing_catalogue_is_not_created(tmp_path: Path) -> None:
    where = tmp_path / "nothing-here"
    with echoimage.open(where) as cat, pytest.raises(echoimage.EchoImageError) as err:
        cat.query(png(synthetic(1)))
    assert str(where) in str(err.value) and "--data-dir" in str(err.value)
    assert not where.exists()


def test_build_update_remove_then_query(tmp_path: Path, shop: Path) -> None:
    """Queries after a build, an update and a removal see each change (one engine)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    write(folder / "coffee.jpg", (shop / "coffee.jpg").read_bytes())
    with echoimage.open(tmp_path / "data", workers=1) as cat:
        cat.build(folder)
        copy = png(resize(to_rgb(photo("rocket")), 0.7))
        assert not cat.query(copy).found
        write(folder / "rocket.jpg", (shop / "rocket.jpg").read_bytes())
        assert cat.update().counts["indexed"] == 1
        assert cat.query(copy).matches[0].url == str((folder / "rocket.jpg").resolve())
        report = cat.remove(str(folder / "rocket.jpg"))
        assert len(report.removed) == 1
        assert not cat.query(copy).found


def test_one_door_for_what_the_faces_do(tmp_path: Path, shop: Path) -> None:
    """The catalogue's own methods behind the CLI and the web: sources, statistics, the
    change number, pictures, adding items, verify, rebuild and removing a source, on one
    store engine that a read opened and a write then made ready to write."""
    from echoimage.types import CatalogueItem, Status

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("coffee", "rocket"):
        write(folder / f"{name}.jpg", (shop / f"{name}.jpg").read_bytes())
    with echoimage.open(tmp_path / "data", workers=1) as cat:
        cat.build(folder)
        store = cat.open_store()
    with echoimage.open(tmp_path / "data", workers=1) as cat:
        seq = cat.change_number()  # opens the store to read
        store = cat.open_store()
        [source] = cat.sources()
        assert source.uri == str(folder.resolve()) and source.counts == {"indexed": 2}
        stats = cat.stats()
        assert stats["images"] == {"indexed": 2} and stats["index"]["entries"] == 2
        picture = cat.picture(1)
        assert picture is not None and picture.thumbnail.shape == (256, 256)
        assert picture.preview is not None and picture.preview[:2] == b"\xff\xd8"
        assert cat.picture(99) is None
        extra = tmp_path / "extra.jpg"
        write(extra, (shop / "astronaut.jpg").read_bytes())
        added = cat.add([CatalogueItem(str(extra), "by hand")], source="by hand")
        assert added.counts == {"indexed": 1} and cat.change_number() > seq
        assert cat.open_store() is store  # the write used the engine the read opened
        assert cat.size == 3  # the loaded index followed
        assert cat.verify().ok and cat.rebuild().images == 3
        removed = cat.remove_source(str(folder))  # a path names its source
        assert len(removed.removed) == 2 and removed.source == source.uri
        assert [s.uri for s in cat.sources()] == ["by hand"]
        assert cat.image(1)["status"] == Status.REMOVED and cat.size == 1


def test_importing_the_api_loads_neither_the_web_nor_the_benchmark() -> None:
    """`import echoimage.api` stays light: no web server, no benchmark, no search engine
    until one is used; every name it exports resolves."""
    import subprocess
    import sys

    code = ("import sys, echoimage.api as api\n"
            "heavy = sorted(m for m in sys.modules if m.startswith(("
            "'echoimage.web', 'echoimage_bench', 'echoimage.search', 'echoimage.indexing', "
            "'fastapi', 'uvicorn', 'faiss')))\n"
            "assert not heavy, heavy\n"
            "missing = [n for n in api.__all__ if getattr(api, n, None) is None]\n"
            "assert not missing, missing\n"
            "assert not any(m.startswith(('echoimage.web', 'echoimage_bench')) "
            "for m in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr


def readme_python_example() -> str:
    """The Python block of the README's "Python API" section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Python API"):]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found is not None
    return found.group(1)


@pytest.mark.parametrize("how", ["file", "stdin"])
def test_readme_python_example_runs_as_written(tmp_path: Path, how: str) -> None:
    """The README's example saved to a file and run as a script (no `__main__` guard), and
    piped to `python -`: the feature workers never run the script again (they did, each
    starting a build of its own, under multiprocessing's spawn and forkserver)."""
    import os
    import subprocess
    import sys

    example = tmp_path / "example.py"
    example.write_text(readme_python_example(), encoding="utf-8")
    env = {k: v for k, v in os.environ.items()
           if k not in ("ECHOIMAGE_DATA_DIR", "ECHOIMAGE_DATABASE_URL")}
    if how == "file":
        proc = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
    else:
        proc = subprocess.run([sys.executable, "-"], cwd=tmp_path, env=env,
                              input=example.read_text(), capture_output=True, text=True,
                              timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr  # no warning, no second build's noise
    lines = proc.stdout.splitlines()
    assert lines[0] == "20 images indexed"
    assert lines[1] == "copy found"
    assert lines[2].startswith("exact 1.0 ") and lines[2].endswith("coffee.jpg {}")
    assert lines[-1] == "{'indexed': 20}"
    assert (tmp_path / "shop-data" / "echoimage.sqlite3").exists()
    with echoimage.open(tmp_path / "shop-data") as cat:
        runs = cat.status()["runs"]
    assert [(r["kind"], r["status"]) for r in runs] == [("build", "ok")]


def test_every_api_error_is_an_echoimage_error(catalogue, tmp_path: Path) -> None:
    """What a caller can get wrong is an EchoImageError with a one-line reason (and, where
    it is one, still the ValueError or TypeError it used to be)."""
    from echoimage.api import scrape_pages

    good = png(to_rgb(photo("coffee")))
    cases = {
        "k=500": lambda: catalogue.query(good, k=500),
        "k=0": lambda: catalogue.query(good, k=0),
        "a float": lambda: catalogue.query(3.5),  # type: ignore[arg-type]
        "a float array": lambda: catalogue.query(np.zeros((10, 10), np.float32)),
        "max_k=0": lambda: echoimage.open(tmp_path, max_k=0),
        "a negative delay": lambda: echoimage.open(tmp_path, scrape_delay=-1),
        "follow -1": lambda: scrape_pages(["http://127.0.0.1:9/"], follow_pages=-1),
        "a missing source": lambda: catalogue.build(tmp_path / "nowhere"),
    }
    for name, case in cases.items():
        with pytest.raises(echoimage.EchoImageError) as err:
            case()
        assert "\n" not in str(err.value) and str(err.value), name
    with pytest.raises(ValueError, match="max_k: Input should be|max_k: Value error"):
        echoimage.open(tmp_path, max_k=0)
    with pytest.raises(TypeError):
        catalogue.query(3.5)  # type: ignore[arg-type]


def test_an_empty_catalogue_hint_fits_it(tmp_path: Path) -> None:
    """A catalogue with nothing to search says what to do about what it holds; it never
    says to run a bare `index build` (on an empty store that adds the 20 sample photos)."""
    def query_error(folder: Path) -> str:
        with echoimage.open(tmp_path / folder.name / "data", workers=1) as cat:
            cat.build(folder)
            with pytest.raises(echoimage.EchoImageError) as err:
                cat.query(png(synthetic(1)))
        return str(err.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert query_error(empty) == (
        "the catalogue has no indexed images: it is empty; add images with `echoimage index "
        "build SOURCE` (a folder, an images.json, an image or page URL)")
    broken = tmp_path / "broken"
    write(broken / "a.jpg", b"not an image at all" * 10)
    assert query_error(broken) == (
        "the catalogue has no indexed images: none of its 1 image is indexed "
        "(1 not-an-image): `echoimage index status` says why")
    # a build going on (recorded by a live process: this one) is indexing them
    from echoimage.store import repo
    from echoimage.store.db import open_store, session_factory
    from echoimage.types import CatalogueItem

    with echoimage.open(tmp_path / "broken" / "data") as cat:
        with session_factory(open_store(cat.settings)).begin() as session:
            repo.add_pending(session, [CatalogueItem(str(broken / "b.jpg"), "x")], None)
            run = repo.start_run(session, "build", [str(broken)])
        with pytest.raises(echoimage.EchoImageError) as err:
            cat.query(png(synthetic(1)))
    assert str(err.value) == (
        "the catalogue has no indexed images: none of its 2 images is indexed yet (1 "
        f"not-an-image, 1 pending): run {run} (build, {repo.run_owner()}) is indexing them; "
        "search again in a moment (`echoimage index status` shows how far it is)")


def test_original_is_the_image_as_it_was_indexed(tmp_path: Path, shop: Path) -> None:
    """`original` reads an indexed image again at its own resolution (capped), in colour;
    once its file holds other bytes (or is gone) it is None."""
    folder = tmp_path / "photos"
    path = write(folder / "coffee.jpg", (shop / "coffee.jpg").read_bytes())
    with echoimage.open(tmp_path / "data", workers=1) as cat:
        cat.build(folder)
        full = cat.original(1, 4000)
        assert full is not None and full.shape == (400, 600, 3)
        small = cat.original(1, 300)
        assert small is not None and small.shape == (200, 300, 3)
        write(path, jpeg(to_rgb(photo("rocket"))))
        assert cat.original(1, 4000) is None
        path.unlink()
        assert cat.original(1, 4000) is None and cat.original(99, 100) is None
