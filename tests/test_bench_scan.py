"""The scan benchmark end to end on a small site: a catalogue of scikit-image photos padded
with derived rows, a site of copies and held-out photos on 127.0.0.1, the scan, the re-scan
and the engine alone on a sample of the same images."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from echoimage_bench.scan import render_scan_markdown, run_scan_benchmark

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_network")]


def _photos(folder: Path) -> Path:
    """Twelve scikit-image photos as JPEGs in folder."""
    d = skimage.data
    rgb = {"astronaut": d.astronaut(), "chelsea": d.chelsea(), "coffee": d.coffee(),
           "rocket": d.rocket(), "ihc": d.immunohistochemistry(),
           "hubble": d.hubble_deep_field()[:400, :600],
           "coins": np.stack([d.coins()] * 3, -1), "camera": np.stack([d.camera()] * 3, -1),
           "brick": np.stack([d.brick()] * 3, -1), "grass": np.stack([d.grass()] * 3, -1),
           "page": np.stack([d.page()] * 3, -1), "moon": np.stack([d.moon()] * 3, -1)}
    folder.mkdir()
    for name, a in rgb.items():
        cv2.imwrite(str(folder / f"{name}.jpg"), np.ascontiguousarray(a[..., ::-1]))
    return folder


def test_scan_benchmark_from_the_bench_command(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from echoimage.cli import cli

    photos, out = _photos(tmp_path / "photos"), tmp_path / "out"
    res = CliRunner().invoke(cli, ["bench", str(photos), "--out", str(out), "--scan",
                                   "--scan-scale", "30", "--scan-site", "12", "3", "4",
                                   "--scan-engine-images", "6"])
    assert res.exit_code == 0, res.output
    result = json.loads((out / "scan.json").read_text())
    assert res.stdout.strip() == render_scan_markdown(result).strip()
    assert result["entries"] == 30 and result["scan"]["copies"] == 4
    assert result["params"]["engine_images"] == 6 and not (out / "bench.json").exists()
    bad = CliRunner().invoke(cli, ["bench", str(photos), "--out", str(out), "--scan",
                                   "--scan-scale", "30", "--scan-site", "12", "3", "40"])
    assert bad.exit_code == 2 and "copies need as many catalogue photos" in bad.output


def test_scan_benchmark_end_to_end(tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos")
    out = tmp_path / "out"
    result = run_scan_benchmark(photos, out, images=12, pages=3, copies=4, scale=30,
                                threads=2, engine_images=6, keep=True, progress=False,
                                command=["test"])
    assert json.loads((out / "scan.json").read_text()) == result
    assert (out / "scan.md").read_text() == render_scan_markdown(result)
    assert result["entries"] == 30 and result["params"]["engine_images"] == 6
    scan, rescan, targets = result["scan"], result["rescan"], result["targets"]
    assert scan["copies"] == 4 and scan["compared"] == 12
    assert scan["pages"] == {"ok": 4}  # the index page and its three pages
    assert targets["recall"] >= 0.75 and scan["wrong"] == len(scan["false"])
    assert set(scan["recall_by_kind"]) == {"main", "hard"}
    assert rescan["compared"] == 0 and rescan["new_findings"] == 0
    assert rescan["images"] == {"unchanged": 12} and rescan["seen"] == scan["findings"]
    assert 0 < targets["rescan_fraction"] < 1 and targets["throughput_ratio"] > 0
    assert "engine alone (6 of the images)" in (out / "scan.md").read_text()
    # the padded data directory, kept, is scanned again as it is
    again = run_scan_benchmark(photos, tmp_path / "again", images=12, pages=3, copies=4,
                               data_dir=out / "scan-data", threads=2, progress=False)
    assert again["catalogue"] == {"reused": str((out / "scan-data").resolve())}
    assert again["entries"] == 30 and again["scan"]["found"] == scan["found"]
    # a data directory of another split (as the load benchmark leaves): its own photos are
    # the catalogue whatever the seed, the rest held out
    other = run_scan_benchmark(photos, tmp_path / "other", images=12, pages=3, copies=4,
                               data_dir=out / "scan-data", threads=2, progress=False,
                               seed=7, engine_images=2)
    assert other["scan"]["copies"] == 4 and other["scan"]["found"] >= 3
    assert other["scan"]["wrong"] == 0
