"""Resume after an interrupted build: SIGKILL a real `echoimage index build` halfway.

The build runs as a subprocess in its own session (so its feature workers die with it, as on
a power cut). The test watches the store read-only and kills the whole session once some but
not all images are indexed, then builds again and checks that every image is indexed exactly
once and the index agrees with the store.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import (
    build_index,
    interrupted_build,
    jpeg,
    mirror,
    search_engine,
    store_snapshot,
    synthetic,
    write,
)

from echoimage.cli import cli
from echoimage.config import Settings
from echoimage.index.manifest import read_manifest
from echoimage.store import repo
from echoimage.store.db import open_store, session_factory
from echoimage.store.models import Status

pytestmark = [pytest.mark.usefixtures("no_network"), pytest.mark.slow, pytest.mark.stores]

REPO = Path(__file__).resolve().parents[1]


@functools.cache
def image_bytes(i: int) -> bytes:
    """Catalogue image i: a distinct 300 px synthetic JPEG."""
    return jpeg(synthetic(i), 85)


def make_catalogue(root: Path, n: int, start: int = 0) -> list[Path]:
    """Images start..start+n-1 written into root."""
    return [write(root / f"img{i:04d}.jpg", image_bytes(i)) for i in range(start, start + n)]


def test_resume_after_sigkill(tmp_path: Path, store_url: str | None) -> None:
    for attempt, n in enumerate((150, 600)):
        data_dir = tmp_path / f"data{attempt}"
        root = tmp_path / f"catalogue{attempt}"
        files = make_catalogue(root, n)
        before, killed, _ = interrupted_build(data_dir, root, len(files))
        if killed:
            break
        # it finished before the kill: try again, from scratch, with a bigger catalogue
    assert killed, "could not interrupt the build mid-run"
    assert 0 < before < len(files)

    settings = Settings(data_dir=data_dir, workers=2)
    summary = build_index(settings, [str(root)], progress=False)
    assert summary.counts["already-indexed"] >= before
    assert summary.counts["already-indexed"] + summary.counts["indexed"] == len(files)
    assert summary.failures == []

    snap = store_snapshot(settings, runs=10)
    known, counts, state, ids, runs = snap.known, snap.counts, snap.state, snap.ids, snap.runs
    urls = sorted(known)
    assert urls == sorted(str(p.resolve()) for p in files)  # each file once, no duplicates
    assert counts == {Status.INDEXED: len(files)}
    assert len(ids) == len(set(ids.tolist())) == len(files)  # one feature row per image
    assert runs[0]["status"] == "ok"

    manifest = read_manifest(settings.index_dir)
    assert manifest is not None
    assert manifest.images == state.count == len(files) and manifest.seq == state.seq

    search = search_engine(settings)
    assert search.size == len(files)
    known_file = files[len(files) // 3]
    top = search.query_bytes(jpeg(mirror(synthetic(len(files) // 3)), 75), 3).matches[0]
    assert top.url == str(known_file.resolve()) and top.duplicate

    # and a third run has nothing left to do
    again = build_index(settings, [str(root)], progress=False)
    assert dict(again.counts) == {"already-indexed": len(files)}


def test_resume_records_interrupted_run(tmp_path: Path, store_url: str | None) -> None:
    """A killed build leaves its run 'running' (shown as interrupted: its process is gone)
    and its unfinished images pending; the next build marks it interrupted."""
    data_dir = tmp_path / "data"
    root = tmp_path / "catalogue"
    files = make_catalogue(root, 150)
    before, killed, _ = interrupted_build(data_dir, root, len(files))
    if not killed:
        pytest.skip("the build finished before it could be interrupted")
    engine = open_store(Settings(data_dir=data_dir))
    try:
        with session_factory(engine)() as s:
            counts = repo.status_counts(s)
            runs = repo.recent_runs(s)
    finally:
        engine.dispose()
    assert counts.get(Status.INDEXED, 0) == before
    assert counts.get(Status.PENDING, 0) == len(files) - before
    # still recorded as running; its process is gone, so it is shown as interrupted
    assert runs[0]["status"] == "interrupted" and runs[0]["duration_s"] is None
    assert runs[0]["counts"] == {} and runs[0]["process"] is None
    assert re.fullmatch(r"its process \(pid \d+ on \S+\) is gone: it was killed before it "
                        r"could record its end", runs[0]["reason"]), runs[0]
    report = json.loads(status(data_dir, "--json"))
    assert report["runs"][0]["reason"] == runs[0]["reason"]
    line = [ln for ln in status(data_dir).splitlines() if ln.startswith("run ")][0]
    assert " interrupted " in line and line.endswith("; " + runs[0]["reason"]), line

    # the next build marks it interrupted for good, saying so; the text shows it too
    build_index(Settings(data_dir=data_dir), [str(root)], progress=False)
    report = json.loads(status(data_dir, "--json"))
    last, killed_run = report["runs"][0], report["runs"][1]
    assert (last["status"], last["reason"]) == ("ok", None)
    assert killed_run["status"] == "interrupted"
    assert re.fullmatch(rf"its process \(pid \d+ on \S+\) was gone when run {last['id']} "
                        r"started: killed", killed_run["reason"]), killed_run
    assert f"; {killed_run['reason']}" in status(data_dir)


def status(data_dir: Path, *args: str) -> str:
    """`echoimage index status` output (the store from ECHOIMAGE_DATABASE_URL, if set)."""
    result = CliRunner().invoke(cli, ["--data-dir", str(data_dir), "index", "status", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_ctrl_c_is_one_line_and_the_build_resumes(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the build's process group, as a terminal sends it) ends the build
    with one line on stderr (no "Aborted!", no traceback, no "coroutine ... was never
    awaited"), exit status 130, the run recorded as interrupted; the same command then
    finishes the job with nothing indexed twice."""
    import signal

    data_dir = tmp_path / "data"
    root = tmp_path / "catalogue"
    for attempt, n in enumerate((150, 600)):
        files = make_catalogue(root, n)
        before, interrupted, log = interrupted_build(data_dir, root, len(files),
                                                     sig=signal.SIGINT)
        if interrupted:
            break
        data_dir = tmp_path / f"data{attempt}"
    assert interrupted, "could not interrupt the build mid-run"
    lines = log.read_text().splitlines()
    assert lines == ["interrupted (Ctrl-C): nothing done so far is lost; run the same "
                     "command again to go on"], lines
    assert 0 < before < len(files)
    settings = Settings(data_dir=data_dir, workers=2)
    runs = store_snapshot(settings, runs=10).runs
    assert (runs[0]["status"], runs[0]["reason"]) == ("interrupted", "interrupted (Ctrl-C)")
    summary = build_index(settings, [str(root)], progress=False)
    assert summary.counts["already-indexed"] == before
    assert summary.counts["already-indexed"] + summary.counts["indexed"] == len(files)
    snap = store_snapshot(settings, runs=10)
    assert snap.counts == {Status.INDEXED: len(files)}
    assert len(snap.ids) == len(set(snap.ids.tolist())) == len(files)


def test_the_pool_shutdown_race_after_ctrl_c_is_not_reported() -> None:
    """After Ctrl-C, loky's manager thread may fail a work item asyncio already cancelled
    (InvalidStateError) and log it with a traceback: dropped while the pool shuts down,
    and only that."""
    import logging
    from concurrent.futures import InvalidStateError

    from echoimage.indexing.runner import _quiet_cancelled_race

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("concurrent.futures")
    handler = Keep()
    logger.addHandler(handler)
    try:
        def report(exc: BaseException) -> None:
            try:
                raise exc
            except BaseException:
                logger.critical("Exception in executor manager thread:", exc_info=True)

        with _quiet_cancelled_race():
            report(InvalidStateError("CANCELLED: <Future state=cancelled>"))
            report(RuntimeError("something else"))
        report(InvalidStateError("outside the shutdown"))
    finally:
        logger.removeHandler(handler)
    assert seen == ["Exception in executor manager thread:"] * 2


def test_a_ctrl_c_is_never_lost_by_the_async_phase() -> None:
    """run_interruptibly: a SIGINT cancels the run's task and ends in KeyboardInterrupt,
    also when the task swallows the cancellation and returns; without one, the result."""
    import asyncio
    import os
    import signal

    from echoimage.aio import run_interruptibly

    async def stubborn() -> str:
        os.kill(os.getpid(), signal.SIGINT)
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            return "finished anyway"
        return "not interrupted"

    async def plain() -> str:
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(5)
        return "not interrupted"

    async def quiet() -> str:
        await asyncio.sleep(0)
        return "done"

    for coro in (stubborn, plain):
        with pytest.raises(KeyboardInterrupt):
            run_interruptibly(coro())
    assert run_interruptibly(quiet()) == "done"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
