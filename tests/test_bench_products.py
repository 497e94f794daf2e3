"""scripts/bench_products.py: different products photographed alike, queried against each
other; its shots are deterministic and different, and its counts add up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from echoimage_bench.products import render_products_markdown, run_products
from echoimage_bench.synthetic import PRODUCT_SIDE as SIDE
from echoimage_bench.synthetic import product_shot
from tests.helpers import REPO


def test_product_shots_are_deterministic_white_around_and_each_its_own() -> None:
    a, b = product_shot(3, seed=1), product_shot(3, seed=1)
    assert a.shape == (SIDE, SIDE, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    others = [product_shot(i, seed=1) for i in range(8)]
    assert all(np.abs(x.astype(int) - y).sum() > 0
               for i, x in enumerate(others) for y in others[i + 1:])
    assert not np.array_equal(product_shot(3, seed=2), a)
    for shot in others:  # one object in the middle, the corners the white background
        assert (shot[:20, :20] == 248).all() and (shot[-20:, -20:] == 248).all()
        assert (shot[SIDE // 2 - 40:SIDE // 2 + 40, SIDE // 2 - 40:SIDE // 2 + 40] != 248).any()
    flat = product_shot(3, seed=1, label=False)
    inside = flat[SIDE // 2 - 60:SIDE // 2 + 60, SIDE // 2 - 60:SIDE // 2 + 60].reshape(-1, 3)
    assert len(np.unique(inside, axis=0)) == 1  # one colour: no label
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 3  # a label in colours of its own


def test_run_products_counts_every_copy_verdict_once(tmp_path: Path) -> None:
    result = run_products(tmp_path, catalogue=12, queries=6, seed=5, progress=False)
    assert result["indexed"] == 12
    n = result["false_copy_results"]
    assert n == len(result["called"]) == sum(result["by_verdict"].values()) \
        == sum(result["by_proof"].values())
    assert result["queries_with_copies"] == len({c["query"] for c in result["called"]}) <= 6
    assert all(12 <= c["query"] < 18 and c["proof"] != "none" for c in result["called"])
    assert json.loads((tmp_path / "products" / "products.json").read_text()) == result
    md = render_products_markdown(result)
    assert f"| queries answered with a copy (false) | **{result['queries_with_copies']}** of 6 |" \
        in md
    again = run_products(tmp_path, catalogue=12, queries=6, seed=5, progress=False)
    assert again["indexed"] == 12 and again["called"] == result["called"]  # a new store
    with pytest.raises(ValueError):
        run_products(tmp_path, catalogue=0, queries=1, progress=False)


def test_the_script_runs_as_the_readme_says(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_products.py"), "--out", str(tmp_path),
         "--catalogue", "8", "--queries", "3", "--flat"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(flat, without labels)" in (tmp_path / "products.md").read_text()
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["catalogue"] == 8 and summary["queries"] == 3 and summary["label"] is False
