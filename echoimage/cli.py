"""Command line: a thin click layer over the library. EchoImageError → ClickException."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from echoimage.config import Settings
from echoimage.errors import EchoImageError


def _settings(ctx: click.Context) -> Settings:
    return ctx.find_object(Settings) or Settings()


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn domain errors into one-line click errors."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EchoImageError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              envvar="ECHOIMAGE_DATA_DIR", default=None,
              help="Data directory (store, index, sample). Env: ECHOIMAGE_DATA_DIR; "
                   "default ./echoimage-data.")
@click.version_option(package_name="echoimage")
@click.pass_context
def cli(ctx: click.Context, data_dir: Path | None) -> None:
    """EchoImage: find copies and near-copies of an image in a catalogue.

    Example:

        echoimage index build ~/photos && echoimage query copy.jpg
    """
    settings = Settings(data_dir=data_dir) if data_dir else Settings()
    ctx.obj = settings


@cli.group()
def index() -> None:
    """Build, update and inspect the catalogue index.

    Example:

        echoimage index build images.json
    """


@index.command("build")
@click.argument("sources", nargs=-1)
@click.option("--workers", type=int, default=None,
              help="Feature worker processes (default: one per core).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@json_option
@click.pass_context
@handle_errors
def index_build(ctx: click.Context, sources: tuple[str, ...], workers: int | None, quiet: bool,
                as_json: bool) -> None:
    """Index catalogue SOURCES: directories, images.json/JSONL/CSV/text files, URLs.

    With no SOURCE, the bundled sample catalogue is indexed. Re-running is incremental:
    already indexed images are skipped and an interrupted build resumes.

    Example:

        echoimage index build ./photos catalogue/images.json https://example.org/images.json
    """
    from echoimage.pipeline import build_index

    settings = _settings(ctx)
    if workers is not None:
        settings = settings.model_copy(update={"workers": workers})
    summary = build_index(settings, list(sources), progress=not quiet)
    _print_summary(summary, as_json)


@index.command("update")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@json_option
@click.pass_context
@handle_errors
def index_update(ctx: click.Context, quiet: bool, as_json: bool) -> None:
    """Re-index: re-read the recorded sources; new, changed and gone images.

    Example (from cron):

        echoimage --data-dir /srv/echoimage index update -q
    """
    from echoimage.update import update_index

    summary = update_index(_settings(ctx), progress=not quiet)
    _print_summary(summary, as_json)


def _print_summary(summary: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary.as_dict()))
        return
    counts = dict(summary.counts)
    rate = summary.processed / summary.seconds if summary.seconds else 0.0
    parts = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "nothing to do"
    click.echo(f"{summary.kind}: {parts} in {summary.seconds:.1f} s "
               f"({rate:.0f} images/s); index entries: {summary.index_entries}")
    for url, status, reason in summary.failures[:20]:
        click.echo(f"  {status}: {url}: {reason}")
    if len(summary.failures) > 20:
        click.echo(f"  … and {len(summary.failures) - 20} more (see `echoimage index status`)")


@index.command("status")
@json_option
@click.pass_context
@handle_errors
def index_status(ctx: click.Context, as_json: bool) -> None:
    """Counts by status, index freshness, data sizes and recent runs.

    Example:

        echoimage index status --json
    """
    from echoimage.status import status_report

    report = status_report(_settings(ctx))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"store: {report['store']}")
    click.echo("images: " + (", ".join(f"{k}: {v}" for k, v in report["counts"].items())
                             or "none"))
    idx = report["index"]
    click.echo(f"index: {idx['entries']} entries, {'fresh' if idx['fresh'] else 'STALE'}"
               + (f", built {idx['built_at']}" if idx.get("built_at") else ""))
    sizes = report["bytes"]
    click.echo("bytes: " + ", ".join(f"{k}: {v:,}" for k, v in sizes.items()))
    for run in report["runs"]:
        dur = f"{run['duration_s']:.1f} s" if run["duration_s"] is not None else "running"
        click.echo(f"run {run['id']} {run['kind']} {run['status']} {run['started_at']} "
                   f"({dur}): {run['counts']}")
    for url, status, reason in report["recent_failures"][:10]:
        click.echo(f"  {status}: {url}: {reason}")


@cli.command("query")
@click.argument("queries", nargs=-1, required=True)
@click.option("-k", type=click.IntRange(1, 1000), default=5, show_default=True,
              help="Results per query.")
@json_option
@click.pass_context
@handle_errors
def query(ctx: click.Context, queries: tuple[str, ...], k: int, as_json: bool) -> None:
    """Find catalogue images similar to each IMAGE_OR_URL (the index loads once).

    With --json, one JSON object per query per line, in input order. Exit status 1 if
    any query failed.

    Example:

        echoimage query -k 3 --json copy1.jpg https://example.org/copy2.png
    """
    from echoimage.search.engine import SearchEngine
    from echoimage.search.query import read_query

    settings = _settings(ctx)
    engine = SearchEngine(settings)
    failed = 0
    for q in queries:
        try:
            data = read_query(q, settings)
            res = engine.query_bytes(data, k)
        except EchoImageError as exc:
            failed += 1
            if as_json:
                click.echo(json.dumps({"query": q, "error": str(exc)}))
            else:
                click.echo(f"{q}: error: {exc}", err=True)
            continue
        if as_json:
            click.echo(json.dumps({"query": q, "results": [m.to_dict() for m in res.matches]}))
            continue
        click.echo(f"{q}")
        for rank, m in enumerate(res.matches, 1):
            verdict = "EXACT" if m.exact else ("duplicate" if m.duplicate else "similar")
            click.echo(f"  {rank}. {m.score:.3f} {verdict:9s} ssim={m.ssim:.3f} "
                       f"orb_inliers={m.orb_inliers:<3d} hash={m.hash_distance:<2d} "
                       f"{m.orientation:13s} {m.url}")
    sys.stdout.flush()
    if failed:
        ctx.exit(1)


@cli.group()
def db() -> None:
    """Manage the store's schema.

    Example:

        echoimage db upgrade
    """


@db.command("upgrade")
@click.pass_context
@handle_errors
def db_upgrade(ctx: click.Context) -> None:
    """Create or migrate the store's schema to the newest revision.

    Example:

        ECHOIMAGE_DATABASE_URL=postgresql+psycopg://localhost/echo echoimage db upgrade
    """
    from echoimage.store.db import current_revision, open_store

    engine = open_store(_settings(ctx))
    click.echo(f"store at revision {current_revision(engine)}")


def main() -> None:
    """Console entry point."""
    cli(prog_name="echoimage")
