"""End to end through click's CliRunner: index build, query, index status, sources, help."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from conftest import URL_ENV
from helpers import (
    build_index,
    jpeg,
    mirror,
    photo,
    png,
    rot90,
    search_engine,
    shrink,
    synthetic,
    tint,
    to_rgb,
    write,
)

from echoimage.catalogue.sample import SAMPLE_NAMES
from echoimage.cli import cli
from echoimage.config import Settings
from echoimage.store import repo
from echoimage.store.db import open_store, session_factory

pytestmark = [pytest.mark.usefixtures("no_network"), pytest.mark.stores]


@pytest.fixture(autouse=True)
def _cli_built_store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests of `cli_built` reach its store through ECHOIMAGE_DATABASE_URL, as a user
    would (unset on SQLite)."""
    if "cli_built" in request.fixturenames:
        url = request.getfixturevalue("module_store_url")
        if url is None:
            monkeypatch.delenv(URL_ENV, raising=False)
        else:
            monkeypatch.setenv(URL_ENV, url)


def run(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    """Invoke the CLI with a data directory; exceptions propagate as test errors."""
    result = CliRunner().invoke(cli, ["--data-dir", str(data_dir), *args], env=env,
                                catch_exceptions=False)
    return result


def json_lines(result: Result) -> list[dict]:
    lines = result.output.splitlines()
    assert lines, result.output
    return [json.loads(line) for line in lines]


def image_rows(data_dir: Path) -> dict[str, dict]:
    """image_info() of every image in a data directory's store, by URL."""
    from echoimage.config import Settings

    engine = open_store(Settings(data_dir=data_dir))
    try:
        with session_factory(engine)() as s:
            return {url: repo.image_info(s, k.id) for url, k in repo.known_images(s).items()}
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def cli_built(catalogue, tmp_path_factory: pytest.TempPathFactory,
              module_store_url: str | None) -> tuple[Path, dict]:
    """`index build DIR --json` on the generated catalogue, once for this module (and
    back end)."""
    data_dir = tmp_path_factory.mktemp("cli-data")
    env = {URL_ENV: module_store_url} if module_store_url else None
    result = run(data_dir, "index", "build", str(catalogue.root), "--json", "--workers", "2",
                 "-q", env=env)
    assert result.exit_code == 0, result.output
    return data_dir, json.loads(result.output)


def test_index_build_json(catalogue, cli_built) -> None:
    data_dir, summary = cli_built
    assert summary["counts"] == {"indexed": len(catalogue.files)}
    assert summary["index_entries"] == len(catalogue.files)
    assert summary["sources"] == [str(catalogue.root.resolve())]
    assert summary["failures"] == []
    rows = image_rows(data_dir)
    assert set(rows) == catalogue.urls
    assert all(r["status"] == "indexed" for r in rows.values())


@pytest.mark.parametrize("name", ["astronaut", "coffee", "page"])
@pytest.mark.parametrize("how,orientation", [("mirror+jpeg", "mirror"), ("rot90", "rot270")])
def test_query_finds_transformed_copy(catalogue, cli_built, tmp_path, name: str, how: str,
                                      orientation: str) -> None:
    arr = photo(name)
    data = jpeg(mirror(arr), 75) if how == "mirror+jpeg" else png(rot90(arr))
    q = write(tmp_path / f"{name}-{how}.jpg", data)
    out = json_lines(run(cli_built[0], "query", "--json", "-k", "3", str(q)))
    assert len(out) == 1 and out[0]["query"] == str(q)
    top = out[0]["results"][0]
    assert top["url"] == catalogue.url(name)
    assert Path(top["url"]).is_absolute() and Path(top["url"]).exists()
    assert top["duplicate"] is True and top["exact"] is False
    assert top["orientation"] == orientation
    assert top["score"] >= 0.5
    assert 0 < len(out[0]["results"]) <= 3
    scores = [r["score"] for r in out[0]["results"]]
    assert scores == sorted(scores, reverse=True)
    assert len({r["url"] for r in out[0]["results"]}) == len(scores)


def test_query_result_fields(catalogue, cli_built, tmp_path) -> None:
    q = write(tmp_path / "q.jpg", jpeg(shrink(tint(photo("rocket")), 400), 70))
    top = json_lines(run(cli_built[0], "query", "--json", str(q)))[0]["results"][0]
    assert top["url"] == catalogue.url("rocket")
    assert {"id", "url", "score", "duplicate", "exact", "ssim", "orb_matches", "orb_inliers",
            "hash_distance", "orientation", "sha256", "region", "transform"} <= set(top)
    assert 0.0 <= top["score"] <= 1.0 and len(top["sha256"]) == 64


def test_many_queries_keep_input_order(catalogue, cli_built, tmp_path) -> None:
    names = ["moon", "camera", "clock", "chelsea", "camera", "grass"]
    paths = [str(write(tmp_path / f"{i}-{n}.jpg", jpeg(shrink(photo(n), 300), 85)))
             for i, n in enumerate(names)]
    result = run(cli_built[0], "query", "--json", "-k", "2", *paths)
    assert result.exit_code == 0, result.output
    out = json_lines(result)
    assert len(result.output.strip().split("\n")) == len(names)  # one object per line
    assert [o["query"] for o in out] == paths
    assert [o["results"][0]["url"] for o in out] == [catalogue.url(n) for n in names]


def test_byte_identical_query_is_exact(catalogue, cli_built) -> None:
    for name in ("coffee", "camera", "coins"):
        path = catalogue.files[name]
        top = json_lines(run(cli_built[0], "query", "--json", str(path)))[0]["results"][0]
        assert top["url"] == catalogue.url(name)
        assert top["exact"] is True and top["duplicate"] is True
        assert top["score"] == 1.0 and top["hash_distance"] == 0


def test_query_text_output(catalogue, cli_built) -> None:
    result = run(cli_built[0], "query", "-k", "2", str(catalogue.files["brick"]))
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == f"{catalogue.files['brick']}: 1 copy found"
    assert " exact " in lines[1] and catalogue.url("brick") in lines[1]
    assert lines[2] == "       the same bytes"  # why it is a copy
    # the other result is not a copy: folded into one line, listed with --all
    assert lines[3].startswith("  (1 nearest image is not a copy") and len(lines) == 4
    listed = run(cli_built[0], "query", "-k", "2", "--all",
                 str(catalogue.files["brick"])).output.splitlines()
    assert " different " in listed[3] and listed[4].startswith("       no proof: ")


def test_query_with_no_copy_says_so(cli_built, tmp_path) -> None:
    """An image with no copy in the catalogue: "no copy found", every result `different`
    (in --json too, with found: false); never a result called a copy at score 0."""
    from tests.helpers import png, synthetic, write

    path = write(tmp_path / "unrelated.png", png(synthetic(7, 320)))
    text = run(cli_built[0], "query", str(path))
    assert text.exit_code == 0
    assert text.output.splitlines()[0] == f"{path}: no copy found"
    assert "different" not in text.output  # folded away without --all
    out = json_lines(run(cli_built[0], "query", "--json", str(path)))[0]
    assert out["found"] is False
    assert {r["verdict"] for r in out["results"]} == {"different"}


def test_query_copies_only(catalogue, cli_built, tmp_path) -> None:
    """--copies-only answers with the copies alone: none for an unrelated image (found:
    false, no results), the copy alone for a copy, in text, --json and --csv."""
    unrelated = write(tmp_path / "unrelated.png", png(synthetic(7, 320)))
    copy = write(tmp_path / "copy.jpg", jpeg(photo("coffee")[40:, 30:], 85))
    out = json_lines(run(cli_built[0], "query", "--json", "--copies-only", str(unrelated),
                         str(copy)))
    assert out[0]["found"] is False and out[0]["results"] == []
    assert out[1]["found"] is True and [r["url"] for r in out[1]["results"]] == \
        [catalogue.url("coffee")]
    assert [o["copies_only"] for o in out] == [True, True]
    text = run(cli_built[0], "query", "--copies-only", str(unrelated), str(copy)).output
    assert text.splitlines() == [f"{unrelated}: no copy found", f"{copy}: 1 copy found",
                                 *text.splitlines()[2:]]
    assert "nearest" not in text and catalogue.url("coffee") in text.splitlines()[2]
    rows = run(cli_built[0], "query", "--csv", "--copies-only", str(unrelated),
               str(copy)).output.splitlines()
    assert len(rows) == 3 and rows[1].startswith(f"{unrelated},0,")
    assert set(rows[1].split(",")[2:]) == {""}  # listed, with no result and no error
    assert rows[2].startswith(f"{copy},1,") and catalogue.url("coffee") in rows[2]
    # ECHOIMAGE_COPIES_ONLY makes it the default; --no-copies-only asks for the nearest
    env = {"ECHOIMAGE_COPIES_ONLY": "1"}
    out = json_lines(run(cli_built[0], "query", "--json", str(unrelated), env=env))
    assert out[0]["results"] == []
    out = json_lines(run(cli_built[0], "query", "--json", "--no-copies-only",
                         str(unrelated), env=env))
    assert len(out[0]["results"]) == 5 and out[0]["found"] is False
    assert out[0]["copies_only"] is False


def test_a_copy_names_the_other_entries_with_its_bytes(tmp_path: Path) -> None:
    """Results are one per content: a copy of a file kept in two places is one result,
    which names the other place (also_at), in text, --json and --csv."""
    import csv
    import io

    data = jpeg(photo("coffee"), 90)
    first = write(tmp_path / "photos" / "coffee.jpg", data)
    second = write(tmp_path / "photos" / "archive" / "coffee-2019.jpg", data)
    write(tmp_path / "photos" / "rocket.jpg", jpeg(photo("rocket"), 90))
    d = tmp_path / "data"
    assert run(d, "index", "build", "-q", str(tmp_path / "photos")).exit_code == 0
    query = write(tmp_path / "q.jpg", jpeg(mirror(photo("coffee")[20:, 30:]), 80))
    out = json_lines(run(d, "query", "--json", "-k", "3", str(query)))[0]
    top, others = out["results"][0], out["results"][1:]
    # one of the two is the result, the other its also_at
    assert sorted([top["url"], *top["also_at"]]) == sorted([str(first.resolve()),
                                                            str(second.resolve())])
    assert len(top["also_at"]) == 1
    assert top["duplicate"] and len(out["results"]) == 2  # one result per content
    assert others[0]["also_at"] == [] and not others[0]["duplicate"]
    text = run(d, "query", str(query)).output.splitlines()
    assert text[-2] == f"       the same file also at {top['also_at'][0]}"
    rows = list(csv.DictReader(io.StringIO(run(d, "query", "--csv", str(query)).output)))
    assert json.loads(rows[0]["also_at"]) == top["also_at"] and rows[1]["also_at"] == ""


def test_k_results_though_entries_share_their_bytes(tmp_path: Path) -> None:
    """-k 6 on a catalogue of 6 contents in 8 files (the copy's bytes in three places):
    six results, one per content, though the query's nearest hashes are three files with
    one content (before, four results)."""
    data = jpeg(photo("coffee"), 90)
    for where in ("coffee.jpg", "a/coffee.jpg", "b/coffee.jpg"):
        write(tmp_path / "photos" / where, data)
    for name in ("astronaut", "chelsea", "rocket", "brick", "camera"):
        write(tmp_path / "photos" / f"{name}.jpg", jpeg(to_rgb(photo(name)), 90))
    d = tmp_path / "data"
    assert run(d, "index", "build", "-q", str(tmp_path / "photos")).exit_code == 0
    query = write(tmp_path / "q.jpg", jpeg(photo("coffee")[::2, ::2], 80))
    results = json_lines(run(d, "query", "--json", "-k", "6", str(query)))[0]["results"]
    assert len(results) == 6 and len({r["sha256"] for r in results}) == 6, results
    assert results[0]["duplicate"] and len(results[0]["also_at"]) == 2


def test_query_errors_keep_going(catalogue, cli_built, tmp_path) -> None:
    missing = str(tmp_path / "missing.jpg")
    good = str(catalogue.files["astronaut"])
    result = CliRunner().invoke(cli, ["--data-dir", str(cli_built[0]), "query", "--json",
                                      missing, good, str(tmp_path)])
    assert result.exit_code == 1
    out = json_lines(result)
    assert [o["query"] for o in out] == [missing, good, str(tmp_path)]
    assert set(out[0]) == {"query", "error"} and "no such file" in out[0]["error"]
    assert out[1]["results"][0]["exact"] is True
    assert "error" in out[2]
    text = CliRunner().invoke(cli, ["--data-dir", str(cli_built[0]), "query", missing,
                                    str(tmp_path)])
    assert text.exit_code == 1
    assert f"{tmp_path}: error: not a regular file: a directory" in text.output.splitlines()
    assert f"{missing}: error: no such file\n" in text.output


def test_query_csv(catalogue, cli_built, tmp_path) -> None:
    """--csv: a header, a row per result in rank order, a row with the error for a query
    that failed; --json and --csv together are refused."""
    import csv
    import io

    from echoimage.cli import QUERY_CSV_FIELDS

    missing = str(tmp_path / "missing.jpg")
    good = str(catalogue.files["brick"])
    result = CliRunner().invoke(cli, ["--data-dir", str(cli_built[0]), "query", "--csv",
                                      "-k", "3", good, missing])
    assert result.exit_code == 1
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == QUERY_CSV_FIELDS
    assert [(r["query"], r["rank"]) for r in rows] == [(good, "1"), (good, "2"), (good, "3"),
                                                       (missing, "0")]
    assert rows[0]["url"] == catalogue.url("brick") and rows[0]["exact"] == "True"
    assert float(rows[0]["score"]) >= float(rows[1]["score"])
    assert "no such file" in rows[3]["error"] and rows[3]["url"] == ""
    both = CliRunner().invoke(cli, ["--data-dir", str(cli_built[0]), "query", "--csv",
                                    "--json", good])
    assert both.exit_code == 2 and "not both" in both.output


def test_one_cap_on_results(catalogue, cli_built, monkeypatch,
                            module_store_url: str | None) -> None:
    """max_k (ECHOIMAGE_MAX_K, default 50) caps k in the CLI and the library alike (the
    web server reads the same Settings)."""
    from echoimage.config import Settings

    good = str(catalogue.files["brick"])
    over = run(cli_built[0], "query", "-k", "51", good)
    assert over.exit_code == 2 and "at most 50 results" in over.output
    assert run(cli_built[0], "query", "-k", "50", good).exit_code == 0
    monkeypatch.setenv("ECHOIMAGE_MAX_K", "60")
    assert run(cli_built[0], "query", "-k", "51", good).exit_code == 0
    assert Settings().max_k == 60
    monkeypatch.delenv("ECHOIMAGE_MAX_K")
    assert Settings().max_k == 50
    engine = search_engine(Settings(data_dir=cli_built[0], database_url=module_store_url))
    with pytest.raises(ValueError, match="between 1 and 50"):
        engine.query_bytes(catalogue.files["brick"].read_bytes(), 51)


def test_query_needs_an_index(tmp_path, store_url: str | None) -> None:
    q = write(tmp_path / "q.png", png(photo("camera")))
    result = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "empty"), "query",
                                      "--json", str(q)])
    assert result.exit_code == 1
    err = json_lines(result)[0]["error"]
    assert "index build" in err and "\n" not in err
    assert not (tmp_path / "empty").exists()  # a query never creates a catalogue


#: commands that read a catalogue (or change one but never start one): none may create a
#: data directory where there is no catalogue
READERS = [["query", "q.png"], ["query", "--json", "q.png"], ["index", "status"],
           ["index", "status", "--json"], ["index", "verify"], ["index", "verify", "--dry-run"],
           ["index", "rebuild"], ["index", "update", "-q"], ["dedupe"], ["dedupe", "--json"],
           ["catalogue", "sources"], ["catalogue", "remove", "17"], ["serve", "--port", "9"]]


@pytest.mark.parametrize("args", READERS, ids=" ".join)
@pytest.mark.parametrize("where", ["default", "data-dir", "env-data-dir", "database-url"])
def test_readers_never_create_a_catalogue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          args: list[str], where: str) -> None:
    """Run from an empty directory, a reader says where it looked and how to point it
    elsewhere, in one line, and leaves the directory as it was."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    write(cwd / "q.png", png(photo("camera")))
    monkeypatch.chdir(cwd)
    monkeypatch.delenv(URL_ENV, raising=False)
    monkeypatch.delenv("ECHOIMAGE_DATA_DIR", raising=False)
    opts: list[str] = []
    looked = cwd / "echoimage-data" / "echoimage.sqlite3"
    if where == "data-dir":
        opts, looked = ["--data-dir", "mine"], cwd / "mine" / "echoimage.sqlite3"
    elif where == "env-data-dir":
        monkeypatch.setenv("ECHOIMAGE_DATA_DIR", str(tmp_path / "env-dir"))
        looked = tmp_path / "env-dir" / "echoimage.sqlite3"
    elif where == "database-url":
        looked = tmp_path / "store.db"
        monkeypatch.setenv(URL_ENV, f"sqlite:///{looked}")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(cli, [*opts, *args])
    assert result.exit_code == 1, result.output
    message = (json_lines(result)[0]["error"] if "--json" in args and args[0] == "query"
               else result.output.strip().splitlines()[-1])
    assert str(looked) in message and "--data-dir" in message, message
    assert "ECHOIMAGE_DATA_DIR" in message and "ECHOIMAGE_DATABASE_URL" in message
    if where == "default":
        assert "default data directory ./echoimage-data" in message
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing created


def test_summary_rate_is_the_progress_bars(tmp_path: Path, catalogue,
                                           store_url: str | None) -> None:
    """`index build` on a terminal prints the processing phase's images, seconds and rate;
    they are the progress bar's final count and rate (tqdm's average, not a recent rate)."""
    import re
    import sys

    from tests.helpers import run_on_pty

    out, err = run_on_pty([sys.executable, "-m", "echoimage", "--data-dir",
                           str(tmp_path / "d"), "index", "build", str(catalogue.root),
                           "--workers", "2"])
    bars = re.findall(r"(\d+)/(\d+) \[[^\]]*?,\s*([\d.]+)img/s\]", err)
    assert bars, err
    bar_n, bar_total, bar_rate = int(bars[-1][0]), int(bars[-1][1]), float(bars[-1][2])
    summary = out.strip().splitlines()[0]
    got = re.search(r" in ([\d.]+) s \(processing phase: (\d+) images in ([\d.]+) s, "
                    r"([\d.]+) images/s\)", summary)
    assert got, summary
    total_s, items, work_s, rate = (float(got[1]), int(got[2]), float(got[3]),
                                    float(got[4]))
    assert items == bar_n == bar_total == len(catalogue.files)
    assert rate == pytest.approx(bar_rate, rel=0.02, abs=0.1), (summary, bars[-1])
    assert rate == pytest.approx(items / work_s, rel=0.1)  # work_s is shown rounded
    assert work_s <= total_s  # the whole run also lists, records and writes the index


def test_no_progress_bar_into_a_log(tmp_path: Path, catalogue) -> None:
    """With stderr a file (a log, cron mail), builds, updates and dedupe draw no bar:
    stderr stays empty, though -q was not given."""
    import subprocess
    import sys

    from tests.helpers import REPO

    data = str(tmp_path / "d")
    for args in (["index", "build", str(catalogue.root), "--workers", "2"],
                 ["index", "update"], ["dedupe"]):
        log = tmp_path / "log.txt"
        with open(log, "w") as err:
            proc = subprocess.run([sys.executable, "-m", "echoimage", "--data-dir", data,
                                   *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
                                  timeout=300)
        assert proc.returncode == 0, log.read_text()
        assert log.read_text() == "", (args, log.read_text())


def _boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("the index writer broke\nsecond line of the message")


def _ctrl_c(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


def test_a_source_that_cannot_be_read_records_nothing(tmp_path: Path, catalogue,
                                                       store_url: str | None) -> None:
    """Every source is read before anything is recorded: a good folder followed by a source
    that is missing (or no catalogue) adds no image and no run."""
    data_dir = tmp_path / "d"
    missing = tmp_path / "no-such-folder"
    failed = CliRunner().invoke(cli, ["--data-dir", str(data_dir), "index", "build", "-q",
                                      str(catalogue.root), str(missing)])
    assert failed.exit_code != 0
    assert failed.output.strip() == f"Error: catalogue source not found: {missing}"
    # nothing at all was created: no data directory, no store (no schema in PostgreSQL)
    from echoimage.store.db import store_exists

    assert not data_dir.exists()
    assert not store_exists(Settings(data_dir=data_dir))
    alone = CliRunner().invoke(cli, ["--data-dir", str(data_dir), "index", "build", "-q",
                                     str(missing)])
    assert alone.exit_code == 1 and not data_dir.exists()


@pytest.mark.parametrize("how, status, reason", [
    ("a stage raises", "failed", "RuntimeError: the index writer broke"),
    ("Ctrl-C", "interrupted", "interrupted (Ctrl-C)"),
])
def test_a_run_that_ends_badly_says_why(tmp_path: Path, catalogue, store_url: str | None,
                                        monkeypatch: pytest.MonkeyPatch, how: str,
                                        status: str, reason: str) -> None:
    """`index status` (text and --json) shows why a build failed or was interrupted."""
    data_dir = tmp_path / "d"
    sources = [str(catalogue.root)]
    with monkeypatch.context() as m:
        # the last stage of the run: writing the index files
        m.setattr("echoimage.indexing.runner.update_index_files",
                  _boom if how == "a stage raises" else _ctrl_c)
        failed = CliRunner().invoke(cli, ["--data-dir", str(data_dir), "index", "build",
                                          "-q", "--workers", "2", *sources])
    assert failed.exit_code != 0
    report = json.loads(run(data_dir, "index", "status", "--json").output)
    last = report["runs"][0]
    assert (last["status"], last["reason"], last["process"]) == (status, reason, None)
    assert last["duration_s"] is not None
    lines = [ln for ln in run(data_dir, "index", "status").output.splitlines()
             if ln.startswith(f"run {last['id']} ")]
    assert len(lines) == 1 and f"build {status} " in lines[0], lines
    assert lines[0].endswith(f"; {reason}"), lines[0]
    # the next build goes on and ends well, with no reason
    assert run(data_dir, "index", "build", "-q", str(catalogue.root)).exit_code == 0
    runs = json.loads(run(data_dir, "index", "status", "--json").output)["runs"]
    assert (runs[0]["status"], runs[0]["reason"]) == ("ok", None)
    assert (runs[1]["status"], runs[1]["reason"]) == (status, reason)


def test_unrelated_photo_is_not_a_duplicate(cli_built, tmp_path) -> None:
    q = write(tmp_path / "unrelated.jpg", jpeg(photo("microaneurysms")))
    results = json_lines(run(cli_built[0], "query", "--json", str(q)))[0]["results"]
    assert not [r for r in results if r["duplicate"]], results


def test_index_status_json(catalogue, cli_built) -> None:
    result = run(cli_built[0], "index", "status", "--json")
    assert result.exit_code == 0
    report = json.loads(result.output)
    assert report["counts"] == {"indexed": len(catalogue.files)}
    assert report["index"]["fresh"] is True
    assert report["index"]["entries"] == len(catalogue.files)
    assert report["runs"] and report["runs"][0]["status"] == "ok"


def test_index_status_text(catalogue, cli_built) -> None:
    """Readable text: no Python reprs; a run's counts as "state: n"."""
    result = run(cli_built[0], "index", "status")
    assert result.exit_code == 0 and "fresh" in result.output
    assert "{" not in result.output and "'" not in result.output, result.output
    assert "build ok" in result.output and f"indexed: {len(catalogue.files)}" in result.output


def test_an_update_that_cannot_read_a_source_says_so_in_its_run(tmp_path: Path) -> None:
    """A source gone from where it was (a folder moved) fails the update's command and
    keeps its images; the run's line in `index status` (and its reason in --json) says
    which source and why, not a plain "ok"."""
    photos = tmp_path / "photos"
    write(photos / "a.jpg", jpeg(photo("astronaut"), 90))
    data_dir = tmp_path / "data"
    assert run(data_dir, "index", "build", str(photos), "-q").exit_code == 0
    photos.rename(tmp_path / "moved")
    result = run(data_dir, "index", "update", "-q")
    assert result.exit_code == 1 and "could not be read" in result.output, result.output
    status = run(data_dir, "index", "status")
    line = next(x for x in status.output.splitlines() if x.startswith("run 2 update"))
    assert line.endswith("1 source could not be read, their images kept as they were: "
                         f"catalogue source not found: {photos.resolve()}"), line
    report = json.loads(run(data_dir, "index", "status", "--json").output)
    assert report["counts"] == {"indexed": 1}
    assert report["runs"][0]["reason"].startswith("1 source could not be read")


def test_a_build_that_indexes_nothing_fails(tmp_path: Path) -> None:
    """Every image failing leaves an empty catalogue: the build says so and exits 1 (a
    cron job would otherwise take it for done); with one good image it is an ordinary
    build with a failure."""
    photos = tmp_path / "photos"
    write(photos / "notes.jpg", b"the captions, not a photo\n")
    data_dir = tmp_path / "data"
    empty = run(data_dir, "index", "build", str(photos), "-q")
    assert empty.exit_code == 1, empty.output
    assert empty.output.splitlines()[-1] == ("Error: no image could be indexed: the "
                                             "catalogue is empty (the failures are above)")
    write(photos / "a.jpg", jpeg(photo("astronaut"), 90))
    one = run(data_dir, "index", "build", str(photos), "-q")
    assert one.exit_code == 0 and "index entries: 1" in one.output, one.output


def test_index_status_tells_a_damaged_index_file(tmp_path: Path) -> None:
    """An index file cut short is no longer "fresh": `index status` says which file and
    that the next command rebuilds it (as a query then does)."""
    photos = tmp_path / "photos"
    write(photos / "a.jpg", jpeg(photo("astronaut"), 90))
    data_dir = tmp_path / "data"
    assert run(data_dir, "index", "build", str(photos), "-q").exit_code == 0
    cut = sorted((data_dir / "index").glob("*.faissbin"))[0]
    with open(cut, "r+b") as f:
        f.truncate(100)
    report = json.loads(run(data_dir, "index", "status", "--json").output)["index"]
    assert report["fresh"] is False and report["unusable"] == (
        f"its file {cut.name} has been changed"), report
    line = next(x for x in run(data_dir, "index", "status").output.splitlines()
                if x.startswith("index:"))
    assert line == (f"index: 1 image, UNUSABLE (its file {cut.name} has been changed; the "
                    "next command rebuilds it)"), line
    query = write(tmp_path / "q.jpg", jpeg(photo("astronaut")[::2, ::2], 80))
    assert run(data_dir, "query", str(query)).exit_code == 0
    assert json.loads(run(data_dir, "index", "status", "--json").output)["index"]["fresh"]


def test_run_counts_text() -> None:
    from echoimage.cli import _run_counts

    assert _run_counts({"status": "ok", "counts": {"not-an-image": 1, "indexed": 20}}) == \
        "indexed: 20, not-an-image: 1"
    assert _run_counts({"status": "ok", "counts": {}}) == "nothing to do"
    assert "before its first batch" in _run_counts({"status": "failed", "counts": {}})
    assert "yet" in _run_counts({"status": "running", "counts": {}})
    assert "never recorded its end" in _run_counts({"status": "interrupted", "counts": {},
                                                    "duration_s": None})


def test_rerun_indexes_nothing_new(catalogue, cli_built) -> None:
    result = run(cli_built[0], "index", "build", str(catalogue.root), "--json", "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["counts"] == {"already-indexed": len(catalogue.files)}
    assert summary["index_entries"] == len(catalogue.files)
    assert len(image_rows(cli_built[0])) == len(catalogue.files)


def test_build_text_summary(catalogue, cli_built) -> None:
    result = run(cli_built[0], "index", "build", str(catalogue.root), "-q")
    assert result.exit_code == 0
    assert "already-indexed: 12" in result.output and "index entries: 12" in result.output


def test_rerun_with_known_failure_processes_nothing(make_settings, tmp_path) -> None:
    root = tmp_path / "small"
    write(root / "a.png", png(synthetic(1, 120)))
    write(root / "b.jpg", b"\xff\xd8\xff\xe0" + bytes(300))
    settings = make_settings()
    first = build_index(settings, [str(root)], progress=False)
    assert first.counts == {"indexed": 1, "decode-error": 1}
    again = build_index(settings, [str(root)], progress=False)
    assert again.counts == {"already-indexed": 1, "known-failure": 1}
    text = run(settings.data_dir, "index", "build", "-q", str(root)).output.splitlines()
    assert text[1] == ("  known failures (failed before) are left as they were: `echoimage "
                       "index update` checks again those that failed for their bytes")


def test_processed_excludes_known_failures(make_settings, tmp_path) -> None:
    root = tmp_path / "small"
    write(root / "a.png", png(synthetic(1, 120)))
    write(root / "b.jpg", b"\xff\xd8\xff\xe0" + bytes(300))
    settings = make_settings()
    build_index(settings, [str(root)], progress=False)
    assert build_index(settings, [str(root)], progress=False).processed == 0


def test_an_option_of_echoimage_after_the_command_says_where_it_goes(tmp_path) -> None:
    result = CliRunner().invoke(cli, ["query", "--data-dir", str(tmp_path), "x.jpg"])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == \
        "Error: --data-dir goes before the command: echoimage --data-dir DIR query ..."
    result = CliRunner().invoke(cli, ["index", "build", "-v", str(tmp_path)])
    assert result.output.splitlines()[-1] == \
        "Error: -v goes before the command: echoimage -v index build ..."
    result = CliRunner().invoke(cli, ["dedupe", "--verbose"])  # no "Did you mean --crops?"
    assert result.output.splitlines()[-1] == \
        "Error: --verbose goes before the command: echoimage --verbose dedupe ..."
    result = CliRunner().invoke(cli, ["query", "--colour", str(tmp_path)])
    assert result.exit_code == 2 and "goes before" not in result.output  # not echoimage's


def test_missing_source_is_a_one_line_error(tmp_path) -> None:
    result = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "d"), "index", "build",
                                      str(tmp_path / "nope"), "-q"])
    assert result.exit_code == 1
    assert "catalogue source not found" in result.output
    assert result.output.strip().count("\n") == 0
    assert isinstance(result.exception, SystemExit)  # a ClickException, not a traceback


# --- catalogue sources ------------------------------------------------------------------

SOURCE_PHOTOS = ("coffee", "rocket", "moon")


def _source_tree(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """Images in tmp/images/, catalogue files in tmp/, entries relative to tmp/."""
    files = {n: write(tmp_path / "images" / f"{n}.jpg", jpeg(shrink(photo(n), 256)))
             for n in SOURCE_PHOTOS}
    return tmp_path, files


def _write_source(kind: str, root: Path) -> Path:
    rel = [f"images/{n}.jpg" for n in SOURCE_PHOTOS]
    if kind == "images.json":  # ImageSpaceDB: a list of objects with extra keys
        doc = [{"url": r, "title": f"photo {i}", "tags": ["x", "y"], "page": None}
               for i, r in enumerate(rel)]
        return write(root / "images.json", json.dumps(doc).encode())
    if kind == "wrapped.json":  # {"images": [...]} and bare strings are accepted too
        doc = {"images": [rel[0], {"url": rel[1], "title": "photo 1"},
                          {"url": rel[2], "title": "photo 2"}]}
        return write(root / "wrapped.json", json.dumps(doc).encode())
    if kind == "text":
        return write(root / "list.txt", ("# my list\n\n" + "\n".join(rel) + "\n").encode())
    if kind == "jsonl":
        lines = [json.dumps({"url": r, "title": f"photo {i}"}) for i, r in enumerate(rel)]
        return write(root / "list.jsonl", ("\n".join(lines) + "\n").encode())
    path = root / "list.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, ["url", "title"])
        w.writeheader()
        for i, r in enumerate(rel):
            w.writerow({"url": r, "title": f"photo {i}"})
    return path


@pytest.mark.parametrize("kind", ["images.json", "wrapped.json", "text", "jsonl", "csv"])
def test_catalogue_sources(tmp_path: Path, kind: str, store_url: str | None) -> None:
    root, files = _source_tree(tmp_path / "src")
    source = _write_source(kind, root)
    data_dir = tmp_path / "data"
    result = run(data_dir, "index", "build", str(source), "--json", "--workers", "1", "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["counts"] == {"indexed": len(SOURCE_PHOTOS)}
    assert summary["sources"] == [str(source.resolve())]
    rows = image_rows(data_dir)
    assert set(rows) == {str(p.resolve()) for p in files.values()}  # resolved from root
    for url, row in rows.items():
        assert row["status"] == "indexed" and row["source"] == str(source.resolve())
        i = SOURCE_PHOTOS.index(Path(url).stem)
        if kind == "images.json":
            assert row["metadata"] == {"title": f"photo {i}", "tags": ["x", "y"]}
        elif kind == "text" or (kind == "wrapped.json" and i == 0):
            assert row["metadata"] == {}
        else:
            assert row["metadata"] == {"title": f"photo {i}"}
    # a query finds an image indexed through the source
    q = write(tmp_path / "q.jpg", jpeg(mirror(shrink(photo("rocket"), 300)), 80))
    top = json_lines(run(data_dir, "query", "--json", str(q)))[0]["results"][0]
    assert top["url"] == str(files["rocket"].resolve())


def test_source_with_missing_file_and_duplicates(tmp_path: Path,
                                                 store_url: str | None) -> None:
    root, files = _source_tree(tmp_path / "src")
    lines = ["images/coffee.jpg", "images/coffee.jpg", str(files["moon"]), "images/gone.jpg"]
    source = write(root / "list.txt", "\n".join(lines).encode())
    result = run(tmp_path / "data", "index", "build", str(source), "--json", "-q",
                 "--workers", "1")
    summary = json.loads(result.output)
    assert summary["counts"] == {"indexed": 2, "missing": 1}
    assert [f["url"] for f in summary["failures"]] == [str(root / "images/gone.jpg")]


@pytest.mark.parametrize("name,content,message", [
    ("images.json", b'{"not": "a list"}', "expected a JSON list"),
    ("broken.json", b'[{"url": "a.jpg"', "not valid JSON"),
    ("nourl.json", b'[{"href": "a.jpg"}]', "has no"),
    ("list.jsonl", b'{"url": "a.jpg"}\nnot json\n', "line 2"),
    ("list.csv", b"href,title\na.jpg,A\n", "'url' column"),
])
def test_bad_catalogue_file(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    bad = write(tmp_path / name, content)
    result = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "d"), "index", "build",
                                      str(bad), "-q"])
    assert result.exit_code == 1
    assert result.output.startswith("Error:") and message in result.output
    assert result.output.strip().count("\n") == 0


def test_directory_source_walks_subfolders(tmp_path: Path, store_url: str | None) -> None:
    root = tmp_path / "photos"
    keep = [write(root / "a.jpg", jpeg(synthetic(21, 120))),
            write(root / "sub" / "deeper" / "B.JPG", jpeg(synthetic(22, 120))),
            write(root / "sub" / "c.webp", png(synthetic(23, 120)))]  # content sniffed
    write(root / ".hidden.jpg", jpeg(synthetic(24, 120)))
    write(root / "notes.txt", b"not a catalogue image")
    result = run(tmp_path / "data", "index", "build", str(root), "--json", "-q",
                 "--workers", "1")
    assert json.loads(result.output)["counts"] == {"indexed": 3}
    assert set(image_rows(tmp_path / "data")) == {str(p.resolve()) for p in keep}


def test_data_dir_from_environment(catalogue, cli_built) -> None:
    result = CliRunner().invoke(cli, ["index", "status", "--json"],
                                env={"ECHOIMAGE_DATA_DIR": str(cli_built[0])})
    assert result.exit_code == 0
    assert json.loads(result.output)["counts"] == {"indexed": len(catalogue.files)}


def test_no_source_builds_the_sample_catalogue(tmp_path: Path, store_url: str | None) -> None:
    data_dir = tmp_path / "data"
    result = run(data_dir, "index", "build", "--json", "--workers", "2", "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    sample = data_dir / "sample"
    written = sorted(sample.glob("*.jpg"))
    assert summary["sources"] == [str(sample.resolve())]
    assert len(written) >= 15 and {p.stem for p in written} <= set(SAMPLE_NAMES)
    assert summary["counts"] == {"indexed": len(written)}
    # the demo works: a changed copy of a sample photo finds it
    q = write(tmp_path / "q.jpg", jpeg(mirror(shrink(photo("coffee"), 350)), 70))
    top = json_lines(run(data_dir, "query", "--json", str(q)))[0]["results"][0]
    assert top["url"] == str((sample / "coffee.jpg").resolve()) and top["duplicate"]


# --- help -------------------------------------------------------------------------------

def _walk(cmd: click.Command, path: tuple[str, ...] = ()):
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from _walk(sub, (*path, name))


def test_every_command_has_help_with_example() -> None:
    seen = []
    for path, cmd in _walk(cli):
        assert cmd.help and "Example" in cmd.help, f"`{' '.join(path) or 'echoimage'}`"
        result = CliRunner().invoke(cli, [*path, "--help"])
        assert result.exit_code == 0 and "Example" in result.output, path
        seen.append(" ".join(path))
    assert {"index build", "index status", "query", "db upgrade"} <= set(seen)


def test_help_examples_can_be_copied_whole() -> None:
    """Example command lines are shown as written (a \\b paragraph: click does not wrap
    them), on an 80-column terminal."""
    for path, cmd in _walk(cli):
        help_text = cmd.help or ""
        assert "\b\n" in help_text, f"`{' '.join(path) or 'echoimage'}`"
        example = help_text.split("\b\n", 1)[1].strip().splitlines()
        out = CliRunner().invoke(cli, [*path, "--help"], terminal_width=80).output
        shown = {x.strip() for x in out.splitlines()}
        for line in example:
            assert not line.strip() or line.strip() in shown, line


def test_every_option_has_help() -> None:
    for path, cmd in _walk(cli):
        for param in cmd.params:
            if isinstance(param, click.Option) and param.name not in ("help", "version"):
                assert param.help, f"{' '.join(path)} {param.opts}"


def test_many_queries_show_a_progress_bar_on_a_terminal(catalogue, cli_built,
                                                        tmp_path: Path) -> None:
    """With stderr on a terminal, many queries show a bar there (stdout keeps only the
    answers); -q, or stderr not a terminal, shows none."""
    import subprocess
    import sys

    from tests.helpers import REPO, run_on_pty

    files = [str(catalogue.files[n]) for n in ("brick", "coffee", "rocket")]
    cmd = [sys.executable, "-m", "echoimage", "--data-dir", str(cli_built[0]), "query",
           "--json", *files]
    out, err = run_on_pty(cmd)
    assert [json.loads(line)["found"] for line in out.splitlines()] == [True] * 3
    assert "query:" in err and "/3 [" in err  # the bar, cleared at the end
    _, quiet = run_on_pty([*cmd, "-q"])
    assert "/3 [" not in quiet
    piped = subprocess.run(cmd, capture_output=True, cwd=REPO, text=True, check=True)
    assert "/3 [" not in piped.stderr


def test_query_colour_sensitive_flag(catalogue, cli_built, tmp_path, monkeypatch) -> None:
    """--colour-sensitive calls a hue-turned copy `recoloured`; without it (and without
    ECHOIMAGE_COLOUR_SENSITIVE) it is a duplicate; the env var turns it on too."""
    import cv2
    import numpy as np

    hsv = cv2.cvtColor(photo("coffee"), cv2.COLOR_RGB2HSV_FULL)
    hsv[..., 0] = ((hsv[..., 0].astype(int) + 128) % 256).astype(np.uint8)
    q = write(tmp_path / "recoloured.jpg", jpeg(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL), 90))
    monkeypatch.delenv("ECHOIMAGE_COLOUR_SENSITIVE", raising=False)
    plain = json_lines(run(cli_built[0], "query", "--json", "-k", "1", str(q)))[0]
    flagged = json_lines(run(cli_built[0], "query", "--json", "-k", "1", "--colour-sensitive",
                             str(q)))[0]
    for out in (plain, flagged):
        assert out["results"][0]["url"] == catalogue.url("coffee")
        assert out["results"][0]["colour_distance"] > 0.5
    assert plain["results"][0]["verdict"] == "duplicate"
    assert flagged["results"][0]["verdict"] == "recoloured"
    monkeypatch.setenv("ECHOIMAGE_COLOUR_SENSITIVE", "1")
    env = json_lines(run(cli_built[0], "query", "--json", "-k", "1", str(q)))[0]
    assert env["results"][0]["verdict"] == "recoloured"
    off = json_lines(run(cli_built[0], "query", "--json", "-k", "1", "--no-colour-sensitive",
                         str(q)))[0]
    assert off["results"][0]["verdict"] == "duplicate"
