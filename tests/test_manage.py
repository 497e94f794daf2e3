"""Managing the catalogue (sources, removing images and sources, building with no source)
and de-duplicating it."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import Built
from helpers import (
    find_duplicates,
    jpeg,
    mirror,
    photo,
    png,
    rot90,
    search_engine,
    synthetic,
    write,
)

from echoimage.cli import cli
from echoimage.search.dedupe import margins

pytestmark = [pytest.mark.usefixtures("no_network"), pytest.mark.stores]


def run(data: Path, *args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--data-dir", str(data), *map(str, args)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def top_url(settings, data: bytes) -> str | None:
    res = search_engine(settings).query_bytes(data, 1)
    return res.matches[0].url if res.matches and res.matches[0].duplicate else None


# --- sources and removals ---------------------------------------------------------------------

def test_sources_and_removals(built_copy: Built, tmp_path: Path) -> None:
    s, cat = built_copy.settings, built_copy.catalogue
    data = s.data_dir
    rc, out = run(data, "catalogue", "sources", "--json")
    assert rc == 0
    info = json.loads(out.splitlines()[0])
    assert info["uri"] == str(cat.root.resolve()) and info["counts"] == {"indexed": 12}

    rocket = jpeg(photo("rocket"), 70)
    assert top_url(s, rocket) == cat.url("rocket")
    with_id = search_engine(s).query_bytes(jpeg(photo("coffee"), 70), 1).matches[0].id
    rc, out = run(data, "catalogue", "remove", "--json", cat.url("rocket"), str(with_id),
                  "/no/such.jpg")
    assert rc == 1  # one ref was unknown
    report = json.loads(out.splitlines()[0])
    assert {r["url"] for r in report["removed"]} == {cat.url("rocket"), cat.url("coffee")}
    assert report["unknown"] == ["/no/such.jpg"] and report["index"]["images"] == 10
    assert top_url(s, rocket) is None  # the index followed at once
    rc, out = run(data, "index", "verify", "--json")
    assert rc == 0 and json.loads(out)["index_images"] == 10

    # an update finds the files still in the folder: they stay removed
    rc, out = run(data, "index", "update", "-q", "--json")
    assert rc == 0 and json.loads(out)["counts"].get("skipped (removed)") == 2
    assert top_url(s, rocket) is None
    rc, out = run(data, "catalogue", "remove", cat.url("rocket"))
    assert rc == 0 and out.splitlines() == ["removed 0 images",
                                            f"  already removed: {cat.url('rocket')}"]
    # building the source again brings them back
    rc, out = run(data, "index", "build", "-q", "--json", cat.root)
    assert rc == 0 and json.loads(out)["counts"]["indexed"] == 2
    assert top_url(s, rocket) == cat.url("rocket")


def test_remove_a_source(built_copy: Built, tmp_path: Path) -> None:
    s, cat = built_copy.settings, built_copy.catalogue
    extra = tmp_path / "extra"
    for i in range(3):
        write(extra / f"x{i}.png", png(synthetic(40 + i, 200)))
    rc, _ = run(s.data_dir, "index", "build", "-q", extra)
    assert rc == 0
    rc, out = run(s.data_dir, "catalogue", "remove", "--source", extra, "--json")
    assert rc == 0
    report = json.loads(out)
    assert report["source"] == str(extra.resolve()) and len(report["removed"]) == 3
    rc, out = run(s.data_dir, "catalogue", "sources")
    assert str(extra.resolve()) not in out and str(cat.root.resolve()) in out
    rc, out = run(s.data_dir, "index", "update", "-q", "--json")
    assert rc == 0 and json.loads(out)["index_entries"] == 12  # the source is forgotten
    rc, out = run(s.data_dir, "catalogue", "remove", "--source", "/nowhere")
    assert rc == 1 and "no recorded source" in out
    rc, out = run(s.data_dir, "catalogue", "remove")
    assert rc == 2 and "give image ids or URLs" in out


def test_build_with_no_source_on_a_catalogue_refuses(built_copy: Built) -> None:
    data = built_copy.settings.data_dir
    rc, out = run(data, "index", "build")
    assert rc == 1 and "already holds a catalogue (12 images)" in out and "--sample" in out
    rc, out = run(data, "index", "build", "-q", "--sample", "--json")
    assert rc == 0 and json.loads(out)["index_entries"] > 12


# --- dedupe -----------------------------------------------------------------------------------

def bordered(arr: np.ndarray, frac: float = 0.2) -> np.ndarray:
    h, w = arr.shape[:2]
    return cv2.copyMakeBorder(arr, int(h * frac), int(h * frac), int(w * frac), int(w * frac),
                              cv2.BORDER_CONSTANT, value=(255, 255, 255))


def central(arr: np.ndarray, frac: float = 0.8) -> np.ndarray:
    h, w = arr.shape[:2]
    dh, dw = int(h * (1 - frac) / 2), int(w * (1 - frac) / 2)
    return np.ascontiguousarray(arr[dh:h - dh, dw:w - dw])


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, set[str]]]:
    """Originals, transformed copies of some, and unrelated photos; the expected groups."""
    root = tmp_path_factory.mktemp("planted")
    copies = {"coffee": [("coffee-mirror.jpg", jpeg(mirror(photo("coffee")), 80))],
              "astronaut": [("astronaut-border.png", png(bordered(photo("astronaut"))))],
              "rocket": [("rocket-crop80.jpg", jpeg(central(photo("rocket")), 85)),
                         ("rocket-q30.jpg", jpeg(photo("rocket"), 30))],
              "chelsea": [("chelsea-rot90.png", png(rot90(photo("chelsea"))))]}
    groups = {}
    for name in ("coffee", "astronaut", "rocket", "chelsea", "camera", "moon", "brick",
                 "clock"):
        write(root / f"{name}.jpg", jpeg(photo(name), 92))
        if name in copies:
            for fname, data in copies[name]:
                write(root / fname, data)
            groups[name] = {str((root / f"{name}.jpg").resolve())} | {
                str((root / f).resolve()) for f, _ in copies[name]}
    return root, groups


def test_dedupe_finds_the_planted_groups(planted, tmp_path: Path, store_url: str | None) -> None:
    root, expected = planted
    data = tmp_path / "data"
    rc, _ = run(data, "index", "build", "-q", root)
    assert rc == 0
    rc, out = run(data, "dedupe", "-q", "--json")
    assert rc == 0
    groups = [json.loads(line) for line in out.splitlines()]
    found = {frozenset(m["url"] for m in g["members"]) for g in groups}
    assert found == {frozenset(v) for v in expected.values()}
    for g in groups:
        keeper = g["members"][0]
        assert keeper["keep"] and g["keep"] == keeper["id"]
        if any("astronaut" in m["url"] for m in g["members"]):
            # the white-bordered copy has more pixels, its original more content
            assert keeper["url"].endswith("/astronaut.jpg"), g
            assert g["members"][1]["width"] > keeper["width"]
        else:  # no border: the most pixels
            pixels = [m["width"] * m["height"] for m in g["members"]]
            assert pixels[0] == max(pixels)
        if any("rocket" in m["url"] for m in g["members"]):
            # of two alike in pixels, the better encoded: q92 over q30
            assert keeper["url"].endswith("/rocket.jpg"), g
        for m in g["members"][1:]:
            assert m["score"] >= 0.5 and m["linked_to"] in {x["id"] for x in g["members"]}
            assert m["proof"] in {"geometry", "near hash", "same bytes"}
    vias = {m["via"] for g in groups for m in g["members"][1:]}
    assert {"whole", "inside-border", "central-crop"} <= vias

    rc, out = run(data, "dedupe", "-q", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == sum(len(v) for v in expected.values())
    assert sum(r["keep"] == "True" for r in rows) == len(expected)
    rc, out = run(data, "dedupe", "-q")
    assert rc == 0 and out.startswith("4 groups of duplicates, 5 images to remove of 13")


def test_dedupe_with_crops_finds_a_part(planted, tmp_path: Path,
                                      store_url: str | None) -> None:
    root, _ = planted
    data = tmp_path / "data"
    folder = tmp_path / "cat"
    for p in root.glob("*.jpg"):
        write(folder / p.name, p.read_bytes())
    arr = photo("brick")
    write(folder / "brick-part.jpg", jpeg(np.ascontiguousarray(arr[40:300, 100:400]), 90))
    rc, _ = run(data, "index", "build", "-q", folder)
    assert rc == 0
    plain = find_duplicates(built_settings(data))
    assert not any(str((folder / "brick-part.jpg").resolve()) in {m.url for m in g.members}
                   for g in plain.groups)
    with_crops = find_duplicates(built_settings(data), crops=True)
    part = [g for g in with_crops.groups if str((folder / "brick-part.jpg").resolve())
            in {m.url for m in g.members}]
    assert part and str((folder / "brick.jpg").resolve()) in {m.url for m in part[0].members}
    assert any(m.link and m.link.via == "votes" for m in part[0].members)


def test_dedupe_keeps_different_products_photographed_alike(tmp_path: Path) -> None:
    """A shop's catalogue of different products photographed alike (one object centred on
    white, each with its own label: their hashes and SSIM are near) holds one duplicate, a
    mirrored, re-encoded copy of one shot: that pair alone is grouped, proven by geometry.
    (With the fused score of old, 26 of these 31 images were one group.)"""
    import echoimage
    from echoimage.search.evidence import Proof
    from echoimage_bench.synthetic import product_shot

    shop = tmp_path / "shop"
    shop.mkdir()
    for i in range(30):
        cv2.imwrite(str(shop / f"p{i:02d}.jpg"), product_shot(i, seed=7))
    cv2.imwrite(str(shop / "p03-copy.jpg"), cv2.flip(product_shot(3, seed=7), 1),
                [cv2.IMWRITE_JPEG_QUALITY, 60])
    with echoimage.open(tmp_path / "data") as cat:
        cat.build(str(shop))
        groups = cat.dedupe().groups
    assert [sorted(Path(m.url).name for m in g.members) for g in groups] == \
        [["p03-copy.jpg", "p03.jpg"]]
    assert groups[0].links[0].proof is Proof.GEOMETRY


def built_settings(data: Path):
    from echoimage.config import Settings

    return Settings(data_dir=data)


def test_margins() -> None:
    gray = np.full((256, 256), 250, np.uint8)
    gray[40:200, 30:220] = synthetic(3, 190)[:160, :, 0]
    assert margins(gray) == (30, 40, 190, 160)
    assert margins(synthetic(3, 256)[..., 0]) is None
