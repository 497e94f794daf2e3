"""The calibration command: the evidence model fitted on copies and held-out photos, the
threshold, the stop rules and their costs, and the model table written back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import bench_photo_folder

from echoimage.search import evidence
from echoimage_bench import calibrate
from echoimage_bench.transforms import NEGATIVE_TRANSFORMS, RECOLOUR_TRANSFORMS, TRANSFORMS


def test_run_calibration_end_to_end(tmp_path: Path) -> None:
    photos, out = tmp_path / "photos", tmp_path / "out"
    bench_photo_folder(photos)
    result = calibrate.run_calibration(photos, out, limit=3, negatives=2, seed=1,
                                       suites=["main"], negatives_fraction=0.25,
                                       progress=False, command=["test"])
    assert json.loads((out / "calibrate.json").read_text()) == result
    assert (out / "calibrate.md").read_text() == calibrate.render_calibration_markdown(result)
    queries = json.loads((out / "calibrate-queries.json").read_text())
    d = result["dataset"]
    assert d["copy_queries"] == 3 * (len(TRANSFORMS) + len(RECOLOUR_TRANSFORMS))
    assert d["non_copy_queries"] == 2 * len(NEGATIVE_TRANSFORMS)
    assert len(queries) == d["copy_queries"] + d["non_copy_queries"]
    # every copy query's original is among its candidates, once
    for q in queries:
        if q["copy_query"]:
            assert sum(c["truth"] for c in q["candidates"]) <= 1
    m = result["model"]
    assert m["features"] == list(evidence.FEATURES)
    assert len(m["weights"]) == len(evidence.FEATURES)
    assert result["threshold"]["threshold"] >= 0.5
    assert result["copies_without_proof"] == 0
    # every rule is judged; running everything loses nothing
    rules = result["stop_rules"]
    assert len(rules) == (len(calibrate.STOP_VOTES) * len(calibrate.STOP_INLIERS)
                          * len(calibrate.STOP_HASH))
    # the loosest rule loses nothing, and no rule is slower than it
    loose = next(r for r in rules if (r["stop_votes"], r["stop_inliers"], r["stop_hash"])
                 == (min(calibrate.STOP_VOTES[1:]), min(calibrate.STOP_INLIERS[1:]),
                     max(calibrate.STOP_HASH[1:])))
    assert all(r["non_copy_p50_ms"] >= 0 for r in rules)
    assert loose["copies_lost"] == min(r["copies_lost"] for r in rules)
    assert set(result["round_times"]["non_copies"]["rounds"]) >= {"hash", "votes", "answer"}
    with pytest.raises(ValueError, match="unknown suites"):
        calibrate.run_calibration(photos, out, suites=["nope"], progress=False)
    # an existing catalogue, only read: its photos are the catalogue, whatever the seed
    # (queried for copies only: the same copies found)
    before = sorted(p.name for p in (out / "data").rglob("*"))
    again = calibrate.run_calibration(photos, tmp_path / "again", limit=2, negatives=1,
                                      seed=5, suites=["main"], progress=False,
                                      data_dir=out / "data", copies_only=True)
    assert again["params"]["data_dir"] == str((out / "data").resolve())
    assert again["params"]["copies_only"] is True and not result["params"]["copies_only"]
    assert "Queries for copies only." in calibrate.render_calibration_markdown(again)
    assert again["dataset"]["catalogue"] == d["catalogue"]
    assert again["dataset"]["entries"] == d["catalogue"]
    assert again["recall"]["rank1"] == 1.0
    assert sorted(p.name for p in (out / "data").rglob("*")) == before
    with pytest.raises(ValueError, match="holds no catalogue"):
        calibrate.run_calibration(photos, tmp_path / "x", data_dir=tmp_path / "none",
                                  progress=False)


def test_write_model_rewrites_only_the_table(tmp_path: Path) -> None:
    copy = tmp_path / "evidence.py"
    shutil.copy(evidence.__file__, copy)
    before = copy.read_text()
    rule = evidence.ProofRule(min_inliers=9, inlier_floor=5.5, inlier_per_match=0.25,
                              near_hash=4)
    model = evidence.ScoreModel("2099-01-01.1", rule, (1.5, 0.25, 0.5, 0.75, 1.0, 2.0), -3.5,
                                "a test fit")
    calibrate.write_model(model, copy)
    after = copy.read_text()
    assert "version='2099-01-01.1'" in after and "weights=(1.5, 0.25, 0.5, 0.75, 1.0, 2.0)" \
        in after and "intercept=-3.5" in after
    # the rest of the module is untouched
    head, tail = before.split("MODEL = ScoreModel(")
    assert after.startswith(head) and after.endswith(tail[tail.index("\n)\n") + 3:])
    namespace: dict[str, object] = {}
    exec(compile(after, str(copy), "exec"), namespace)  # noqa: S102 - the written module runs
    written = namespace["MODEL"]
    got = (written.version, repr(written.rule), written.weights,  # type: ignore[attr-defined]
           written.intercept, written.fitted)  # type: ignore[attr-defined]
    assert got == (model.version, repr(model.rule), model.weights, model.intercept,
                   model.fitted)
    (tmp_path / "other.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="no MODEL"):
        calibrate.write_model(model, tmp_path / "other.py")
