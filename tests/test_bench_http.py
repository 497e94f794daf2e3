"""scripts/bench_http.py: the build-speed benchmark runs its reference, a local build, an
HTTP build from its own server process and an update, and its figures add up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import CATALOGUE_PHOTOS, REPO, jpeg, photo

pytestmark = pytest.mark.slow


def test_bench_http_reports_rates_cpu_split_and_ratios(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    names = CATALOGUE_PHOTOS[:8]  # more than a run does inline: the pool's workers run
    for name in names:
        (photos / f"{name}.jpg").write_bytes(jpeg(photo(name)))
    (photos / "notes.txt").write_text("not a photo")  # not one of the benchmark's photos
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_http.py"), str(photos),
         "--out", str(out), "--repeat", "1"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "bench-http.json").read_text())
    run = report["runs"][0]
    n = len(names)
    assert report["photos"] == n
    for build in ("local", "http"):
        assert run[build]["images"] == n
        assert run[build]["counts"] == {"indexed": n}
        assert run[build]["images_per_s"] > 0
    # the update asked the server once per photo and was told each was not modified
    update = run["http"]["then"]
    assert update["requests"] == update["not_modified"] == n
    assert update["counts"] == {"unchanged": n}
    # the reference and the ratios are measured, and the split adds up to the whole
    assert report["reference_ms"] > 0
    assert report["local_cpu_over_reference"] == pytest.approx(
        run["local"]["cpu_ms_per_image"] / run["reference_ms"])
    split = run["local"]["cpu_split_ms"]
    assert sum(split.values()) == pytest.approx(run["local"]["cpu_ms_per_image"], rel=1e-6)
    assert split["worker orb"] > 0 and split["worker decode"] > 0
    worker_stages = sum(v for k, v in split.items() if k.startswith("worker ")
                        and not k.startswith("worker other"))
    assert worker_stages == pytest.approx(run["local"]["worker_task_cpu_ms_per_image"],
                                          rel=1e-6)
    # a further image: the whole build beyond a build of its first half, per photo more
    half = run["half"]
    assert half["images"] == n // 2 and half["counts"] == {"indexed": n // 2}
    further = run["further"]
    assert further["images"] == n - n // 2
    assert further["cpu_ms_per_image"] == pytest.approx(
        (run["local"]["cpu_ms_per_image"] * n - half["cpu_ms_per_image"] * (n // 2))
        / (n - n // 2))
    assert sum(further["cpu_split_ms"].values()) == pytest.approx(
        further["cpu_ms_per_image"], rel=1e-6)
    assert run["tail_reference_ms"] > 0
    assert run["further_over_reference"] == pytest.approx(
        further["cpu_ms_per_image"] / run["tail_reference_ms"])
    md = (out / "bench-http.md").read_text()
    assert "× reference" in md and "of local" in md and "worker orb" in md
    assert "a further image" in md and "| further image |" in md
