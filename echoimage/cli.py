"""Command line: a thin click layer over the library. EchoImageError → ClickException."""

from __future__ import annotations

import functools
import json
import logging
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
@click.option("--verbose", "-v", is_flag=True,
              help="Also log what the index does (refreshes, segments, rebuilds).")
@click.version_option(package_name="echoimage")
@click.pass_context
def cli(ctx: click.Context, data_dir: Path | None, verbose: bool) -> None:
    """EchoImage: find copies and near-copies of an image in a catalogue.

    Example:

        echoimage index build ~/photos && echoimage query copy.jpg
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="echoimage: %(message)s", stream=sys.stderr)
    for noisy in ("alembic", "faiss"):  # their INFO lines are about their own loading
        logging.getLogger(noisy).setLevel(logging.WARNING)
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
    if summary.counts.get("source-unreadable"):
        raise click.ClickException("some catalogue sources could not be read (see above); "
                                   "their images were kept as they were")


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


@index.command("rebuild")
@json_option
@click.pass_context
@handle_errors
def index_rebuild(ctx: click.Context, as_json: bool) -> None:
    """Rebuild the index files from the store from scratch (retraining the quantizer).

    Never needed for correctness (builds and updates keep the index current); useful after
    changing index settings, or to compare with the incrementally maintained index.

    Example:

        echoimage index rebuild
    """
    from echoimage.index.build import rebuild_index_files
    from echoimage.store.db import open_store

    settings = _settings(ctx)
    engine = open_store(settings, create=False)
    try:
        report = rebuild_index_files(settings, engine, "`echoimage index rebuild`")
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        click.echo(f"index rebuilt: {report.images} images at change {report.seq} in "
                   f"{report.seconds:.1f} s")


@index.command("verify")
@click.option("--dry-run", is_flag=True, help="Only say what would be repaired.")
@json_option
@click.pass_context
@handle_errors
def index_verify(ctx: click.Context, dry_run: bool, as_json: bool) -> None:
    """Check that the store and the index files agree; repair what does not.

    Every image the store has indexed must be in the index exactly once (with its pHash and
    its local entries) and nothing else may be. Exit status 1 when something is wrong and
    was not repaired (--dry-run).

    Example:

        echoimage index verify --dry-run
    """
    from echoimage.verify import verify_index

    report = verify_index(_settings(ctx), repair=not dry_run)
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        seq = "none" if report.index_seq is None else f"change {report.index_seq}"
        click.echo(f"store: {report.store_indexed} indexed images at change "
                   f"{report.store_seq}; index: {report.index_images} images at {seq}"
                   + (f" ({report.later_changes} later changes for the next update)"
                      if report.later_changes else ""))
        if report.files:
            click.echo(f"  index files cannot be used: {report.files}")
        for problem, ids in report.problems.items():
            more = report.counts[problem] - len(ids)
            click.echo(f"  {report.counts[problem]} images {problem}: ids "
                       f"{', '.join(map(str, ids))}{f' and {more} more' if more else ''}")
        for action in report.repaired:
            click.echo(f"  repaired: {action}")
        for action in report.would_repair:
            click.echo(f"  would repair: {action}")
        click.echo("ok" if report.ok else "NOT OK")
    if not report.ok:
        ctx.exit(1)


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
    if idx.get("unusable"):
        state = f"UNUSABLE ({idx['unusable']}; the next command rebuilds it)"
    elif "seq" not in idx:
        state = "MISSING (the next command builds it)"
    else:
        state = "fresh" if idx["fresh"] else f"behind the store by {idx['behind_by']} changes"
    click.echo(f"index: {idx['entries']} images, {state}")
    if "layout" in idx:
        trained = idx.get("trained") or {}
        click.echo(f"  layout {idx['layout']}"
                   + (f" ({trained['nlist']} lists trained on {trained['descriptors']:,} "
                      "descriptors)" if trained else "")
                   + f", {len(idx['segments'])} segments, {idx['tombstones']} tombstones, "
                   f"updated {idx['updated_at']}")
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
    from echoimage.fetch.local import path_url
    from echoimage.search.engine import SearchEngine
    from echoimage.search.query import read_query

    settings = _settings(ctx)
    try:
        engine = SearchEngine(settings)
    except EchoImageError as exc:
        if not as_json:
            raise
        for arg in queries:  # the contract: one object per query, in input order
            click.echo(json.dumps({"query": path_url(arg), "error": str(exc)}))
        ctx.exit(1)
    failed = 0
    for arg in queries:
        q = path_url(arg)  # printable: a name that is not UTF-8 as a file:// URL
        try:
            data = read_query(arg, settings)
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


@cli.group()
def catalogue() -> None:
    """Make catalogues: scrape image URLs from web pages (ImageSpaceDB format).

    Example:

        echoimage catalogue scrape https://shop.example/products --output images.json
    """


@catalogue.command("scrape")
@click.argument("pages", nargs=-1, required=True)
@click.option("--follow-pages", type=click.IntRange(0, 10_000), default=0, show_default=True,
              help="Also follow up to N same-site links per start page.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("images.json"), show_default=True, help="Catalogue file to write.")
@click.option("--add", is_flag=True, help="Merge into an existing --output instead of replacing.")
@click.option("--skip-word", "skip_words", multiple=True,
              help="Skip image URLs containing this word (repeatable; replaces the defaults: "
                   "logo, icon, favicon, category-menu, sprite).")
@click.option("--extension", "extensions", multiple=True,
              help="Keep only these extensions (repeatable, e.g. --extension .jpg).")
@click.option("--keep-no-extension", is_flag=True, help="Keep image URLs with no extension.")
@handle_errors
def catalogue_scrape(pages: tuple[str, ...], follow_pages: int, output: Path, add: bool,
                     skip_words: tuple[str, ...], extensions: tuple[str, ...],
                     keep_no_extension: bool) -> None:
    """Collect <img> URLs (src, data-src, srcset) from PAGE_URLs into an images.json.

    Example:

        echoimage catalogue scrape https://example.org/gallery --follow-pages 5 --add
    """
    import asyncio

    from echoimage.scrape import ScrapeFilters, scrape, write_catalogue

    filters = ScrapeFilters()
    if skip_words:
        filters = ScrapeFilters(skip_words=tuple(w.lower() for w in skip_words),
                                extensions=filters.extensions)
    if extensions:
        exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
        filters = ScrapeFilters(skip_words=filters.skip_words, extensions=exts)
    if keep_no_extension:
        filters = ScrapeFilters(filters.skip_words, filters.extensions, True)
    report = asyncio.run(scrape(list(pages), follow_pages, filters))
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    added = write_catalogue(report.images, output, add)
    outcome = f"{added} new in {output}" if added else f"0 new; {output} unchanged"
    click.echo(f"{len(report.images)} image URLs from {len(report.pages)} pages; {outcome}")


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port to listen on.")
@click.pass_context
@handle_errors
def serve(ctx: click.Context, host: str, port: int) -> None:
    """Serve the web page and the JSON API (POST /api/search, docs at /docs).

    Example:

        echoimage serve --host 0.0.0.0 --port 8000
    """
    from echoimage.web.app import serve as run_server

    run_server(_settings(ctx), host, port)


@cli.command("bench")
@click.argument("photo_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("bench-out"), show_default=True, help="Output directory.")
@click.option("--limit", type=int, default=None, help="Query only N catalogue photos.")
@click.option("--no-scale", is_flag=True, help="Skip the 10k/100k padded-index timings.")
@handle_errors
def bench(photo_dir: Path, out: Path, limit: int | None, no_scale: bool) -> None:
    """Run the copy-detection benchmark on a folder of photos; writes bench.json/bench.md.

    Example:

        echoimage bench ../shared/datasets/bsds500 --out bench-out --limit 100 --no-scale
    """
    from echoimage.bench import run_benchmark

    kwargs: dict[str, Any] = {"limit": limit}
    if no_scale:
        kwargs["scale"] = ()
    report = run_benchmark(photo_dir, out, **kwargs)
    click.echo(report.get("markdown", ""))


def main() -> None:
    """Console entry point."""
    cli(prog_name="echoimage")
