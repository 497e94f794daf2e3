"""Command line: a thin click layer over the library. EchoImageError → ClickException."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from echoimage.api import Catalogue, make_settings
from echoimage.config import Settings
from echoimage.errors import EchoImageError
from echoimage.types import Outcome, counted


def _settings(ctx: click.Context) -> Settings:
    return ctx.find_object(Settings) or Settings()


def _catalogue(ctx: click.Context, **changes: Any) -> Catalogue:
    """The catalogue of the command's settings (with the options that were given), closed
    when the command ends."""
    return ctx.with_resource(Catalogue(_with(_settings(ctx), **changes)))


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn domain errors into one-line click errors."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EchoImageError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


#: what Ctrl-C prints, alone (exit status 130, as a shell reports SIGINT)
INTERRUPTED = ("interrupted (Ctrl-C): nothing done so far is lost; run the same command "
               "again to go on")


#: the options of `echoimage` itself, given before the command
GLOBAL_OPTIONS = ("--data-dir", "--verbose", "-v")


class EchoImageGroup(click.Group):
    """The command group: Ctrl-C ends a command with one line (not click's "Aborted!"); an
    option of `echoimage` itself given after the command says where it goes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo(INTERRUPTED, err=True)
            raise click.exceptions.Exit(130) from None
        except click.NoSuchOption as exc:
            if exc.option_name in GLOBAL_OPTIONS and exc.ctx is not None:
                given = exc.option_name + (" DIR" if exc.option_name == "--data-dir" else "")
                command = exc.ctx.command_path.removeprefix(ctx.command_path).strip()
                exc.message = (f"{exc.option_name} goes before the command: "
                               f"echoimage {given} {command} ...")
                exc.possibilities = None  # type: ignore[misc]  # not the command's options
            raise


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
cluster_option = click.option(
    "--cluster", metavar="ADDRESS", default=None,
    help="Run on a Dask cluster: its scheduler (tcp://HOST:8786) or local:N (N local "
         "worker processes). Env: ECHOIMAGE_CLUSTER.")
shards_option = click.option(
    "--shards", type=click.IntRange(1, 1024), default=None,
    help="With --cluster: hold the local-feature index in N shards on the workers. "
         "Env: ECHOIMAGE_INDEX_SHARDS.")


def _with(settings: Settings, **changes: Any) -> Settings:
    """Settings with the options that were given."""
    given = {k: v for k, v in changes.items() if v is not None}
    return settings.model_copy(update=given) if given else settings


@click.group(cls=EchoImageGroup, context_settings={"help_option_names": ["-h", "--help"]})
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

    \b
        echoimage index build ~/photos && echoimage query copy.jpg
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="echoimage: %(message)s", stream=sys.stderr)
    if not verbose:  # Dask sets its own loggers' levels when it is imported
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    for noisy in ("alembic", "faiss"):  # their INFO lines are about their own loading
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        settings = make_settings(data_dir=data_dir) if data_dir else make_settings()
    except EchoImageError as exc:
        raise click.ClickException(str(exc)) from None
    ctx.obj = settings
    from echoimage.api import agree_pillow_limit

    agree_pillow_limit(settings.max_pixels)  # this process is ours: one pixel cap


@cli.group()
def index() -> None:
    """Build, update and inspect the catalogue index.

    Example:

    \b
        echoimage index build images.json
    """


@index.command("build")
@click.argument("sources", nargs=-1)
@click.option("--sample", is_flag=True,
              help="Also index the bundled sample catalogue (the default on an empty store).")
@click.option("--follow-pages", type=click.IntRange(0, 10_000), default=None,
              help="A web page SOURCE: also scrape up to N same-site pages it links to "
                   "(every update scrapes them again). Default 0.")
@click.option("--workers", type=int, default=None,
              help="Feature worker processes (default: one per core).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@cluster_option
@json_option
@click.pass_context
@handle_errors
def index_build(ctx: click.Context, sources: tuple[str, ...], sample: bool,
                follow_pages: int | None, workers: int | None, quiet: bool,
                cluster: str | None, as_json: bool) -> None:
    """Index catalogue SOURCES: directories, images.json/JSONL/CSV/text files, image URLs,
    web pages.

    A web page is a source itself: its images are scraped (robots.txt honoured, see
    `catalogue scrape`), with up to --follow-pages same-site pages, and `index update`
    scrapes them again (new images added, changed ones re-indexed, vanished ones gone).
    With no SOURCE on an empty store, the bundled sample catalogue is indexed (with
    --sample, on any store). Re-running is incremental: already indexed images are skipped
    and an interrupted build resumes.

    Example:

    \b
        echoimage index build ./photos catalogue/images.json https://example.org/images.json
        echoimage index build https://shop.example/products --follow-pages 20
    """
    summary = _catalogue(ctx, workers=workers, cluster=cluster).build(
        *sources, sample=sample, progress=not quiet, follow_pages=follow_pages)
    _print_summary(summary, as_json)
    if not summary.index_entries and summary.failures:  # a cron job must not call it done
        raise click.ClickException("no image could be indexed: the catalogue is empty "
                                   "(the failures are above)")


@index.command("update")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@cluster_option
@json_option
@click.pass_context
@handle_errors
def index_update(ctx: click.Context, quiet: bool, cluster: str | None, as_json: bool) -> None:
    """Re-index: re-read the recorded sources; new, changed and gone images.

    Example (from cron):

    \b
        echoimage --data-dir /srv/echoimage index update -q
    """
    summary = _catalogue(ctx, cluster=cluster).update(progress=not quiet)
    _print_summary(summary, as_json)
    if summary.counts.get(Outcome.SOURCE_UNREADABLE):
        raise click.ClickException("some catalogue sources could not be read (see above); "
                                   "their images were kept as they were")


def _print_summary(summary: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary.as_dict()))
        return
    counts = dict(summary.counts)
    parts = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "nothing to do"
    # the processing phase's rate is the progress bar's final one (see work_phase)
    work = (f"processing phase: {counted(summary.work_items, 'image')} in "
            f"{summary.work_seconds:.2f} s, "
            f"{summary.work_rate:.1f} images/s" if summary.work_items else "nothing processed")
    click.echo(f"{summary.kind}: {parts} in {summary.seconds:.1f} s ({work}); "
               f"index entries: {summary.index_entries}")
    if note := summary.skipped_note():
        click.echo(f"  {note}")
    if counts.get(Outcome.KNOWN_FAILURE):
        click.echo("  known failures (failed before) are left as they were: `echoimage "
                   "index update` checks again those that failed for their bytes")
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

    \b
        echoimage index rebuild
    """
    report = _catalogue(ctx).rebuild("`echoimage index rebuild`")
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

    \b
        echoimage index verify --dry-run
    """
    report = _catalogue(ctx).verify(repair=not dry_run)
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

    \b
        echoimage index status --json
    """
    report = _catalogue(ctx).status()
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
    click.echo(f"index: {counted(idx['entries'], 'image')}, {state}")
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
        if run["duration_s"] is not None:
            dur = f"{run['duration_s']:.1f} s"
        else:
            dur = f"running in {run['process']}" if run["process"] else "not finished"
        why = f"; {run['reason']}" if run["reason"] else ""
        click.echo(f"run {run['id']} {run['kind']} {run['status']} {run['started_at']} "
                   f"({dur}): {_run_counts(run)}{why}")
    for url, status, reason in report["recent_failures"][:10]:
        click.echo(f"  {status}: {url}: {reason}")


#: columns of `query --csv`
QUERY_CSV_FIELDS = ["query", "rank", "verdict", "url", "score", "duplicate", "exact", "ssim",
                    "orb_inliers", "hash_distance", "orientation", "votes", "colour_distance",
                    "id", "sha256", "metadata", "error", "why", "also_at"]


def _run_counts(run: dict[str, Any]) -> str:
    """A run's counts as text ("indexed: 20, not-an-image: 1"), or why there are none."""
    from echoimage.types import RunStatus

    counts = run["counts"]
    if counts:
        return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    if run["status"] == RunStatus.RUNNING:
        return "nothing recorded yet"
    if run["status"] == RunStatus.OK:
        return "nothing to do"
    if run.get("duration_s", 0) is None:  # killed: counts are recorded with the end
        return "no counts (it never recorded its end)"
    return "nothing recorded (it ended before its first batch was written)"


@cli.command("query")
@click.argument("queries", nargs=-1, required=True)
@click.option("-k", type=click.IntRange(1), default=None,
              help="Results per query (default ECHOIMAGE_DEFAULT_K, 5; at most "
                   "ECHOIMAGE_MAX_K, 50).")
@click.option("--all", "show_all", is_flag=True,
              help="Text output: also list the results that are not copies.")
@click.option("--colour-sensitive/--no-colour-sensitive", default=None,
              help="Call a copy in clearly different colours `recoloured`, not `duplicate` "
                   "(its verdict; see colour_distance). Env: ECHOIMAGE_COLOUR_SENSITIVE.")
@click.option("--copies-only/--no-copies-only", default=None,
              help="Answer with the copies alone, not the nearest images that are not "
                   "copies (faster: they are not scored to be shown). Env: "
                   "ECHOIMAGE_COPIES_ONLY.")
@cluster_option
@shards_option
@click.option("--csv", "as_csv", is_flag=True,
              help="Print CSV: a header, then a row per result (rank 0 and the error for a "
                   "failed query; rank 0 alone for one with no result, as with "
                   "--copies-only and no copy).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar (shown on a terminal).")
@json_option
@click.pass_context
@handle_errors
def query(ctx: click.Context, queries: tuple[str, ...], k: int | None, show_all: bool,
          colour_sensitive: bool | None, copies_only: bool | None, cluster: str | None,
          shards: int | None, as_csv: bool, quiet: bool, as_json: bool) -> None:
    """Find copies of each IMAGE_OR_URL in the catalogue (the index loads once).

    Each result has a verdict: exact, duplicate, partial (a part of the catalogue
    image), recoloured (with --colour-sensitive) or different (not a copy: listed only
    with --all, or in --json/--csv; none with --copies-only). A query with no copy says
    "no copy found". With
    --json, one JSON object per query per line, in input order. Exit status 1 if any query
    failed.

    Example:

    \b
        echoimage query -k 3 --json copy1.jpg https://example.org/copy2.png
    """
    from tqdm import tqdm

    from echoimage.api import path_url

    if as_json and as_csv:
        raise click.UsageError("--json or --csv, not both")
    settings = _with(_settings(ctx), cluster=cluster, index_shards=shards,
                     colour_sensitive=colour_sensitive)
    k = settings.default_k if k is None else k
    if k > settings.max_k:
        raise click.BadParameter(f"at most {settings.max_k} results per query (raise "
                                 "ECHOIMAGE_MAX_K for more)", param_hint="-k")
    writer = None
    if as_csv:
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=QUERY_CSV_FIELDS, lineterminator="\n",
                                extrasaction="ignore")
        writer.writeheader()
    catalogue = ctx.with_resource(Catalogue(settings))
    try:
        catalogue.search_engine  # noqa: B018 - load the index once, before the first query
    except EchoImageError as exc:
        if not as_json:
            raise
        for arg in queries:  # the contract: one object per query, in input order
            click.echo(json.dumps({"query": path_url(arg), "error": str(exc)}))
        ctx.exit(1)
    failed = 0
    # a bar on stderr for many queries, on a terminal only (None: tqdm's tty check)
    bar = tqdm(total=len(queries), unit="query", desc="query", file=sys.stderr,
               disable=True if quiet or len(queries) < 2 else None, dynamic_ncols=True,
               leave=False)
    try:
        # colour_sensitive: in settings
        for arg, res in catalogue.query_many(queries, k, copies_only=copies_only):
            q = path_url(arg)  # printable: a name that is not UTF-8 as a file:// URL
            bar.update(1)
            if isinstance(res, EchoImageError):
                failed += 1
                if writer is not None:
                    writer.writerow({"query": q, "rank": 0, "error": str(res)})
                elif as_json:
                    click.echo(json.dumps({"query": q, "error": str(res)}))
                else:
                    bar.clear()
                    click.echo(f"{q}: error: {_named_once(str(res), q)}", err=True)
                continue
            if writer is not None:
                if not res.matches:  # copies only, none found: the query is still listed
                    writer.writerow({"query": q, "rank": 0})
                for rank, m in enumerate(res.matches, 1):
                    row = m.to_dict()
                    row["metadata"] = json.dumps(row["metadata"]) if row["metadata"] else ""
                    row["also_at"] = json.dumps(row["also_at"]) if row["also_at"] else ""
                    writer.writerow({"query": q, "rank": rank, **row})
            elif as_json:
                click.echo(json.dumps({"query": q, "found": res.found,
                                       "results": [m.to_dict() for m in res.matches],
                                       "copies_only": res.copies_only}))
            else:
                bar.clear()
                click.echo("\n".join(_query_lines(q, res, show_all)))
    finally:
        bar.close()
    sys.stdout.flush()
    if failed:
        ctx.exit(1)


def _named_once(reason: str, q: str) -> str:
    """A query's error without the query's own name, which the line gives first
    ("q: x", "no such file: q", "cannot fetch q: x")."""
    return reason.removeprefix(f"{q}: ").removesuffix(f": {q}").replace(f" {q}: ", ": ", 1)


def _query_lines(q: str, res: Any, show_all: bool) -> list[str]:
    """One query's answer as text: the copies found (or "no copy found"), then the other
    results (with show_all) or how many there were."""
    copies = res.copies
    others = [m for m in res.matches if not m.verdict.is_copy]
    head = f"{q}: " + (f"{counted(len(copies), 'copy', 'copies')} found"
                       if copies else "no copy found")
    lines = [head]
    for rank, m in enumerate(res.matches, 1):
        if not m.verdict.is_copy and not show_all:
            continue
        colour = "" if m.colour_distance is None else f" colour={m.colour_distance:.2f}"
        lines.append(f"  {rank}. {m.score:.3f} {m.verdict:10s} ssim={m.ssim:.3f} "
                     f"orb_inliers={m.orb_inliers:<3d} hash={m.hash_distance:<2d}"
                     f"{colour} {m.orientation:13s} {m.url}")
        if m.why:
            lines.append(f"       {m.why}")
        if m.metadata:
            lines.append("       " + ", ".join(f"{key}: {v}" for key, v in m.metadata.items()))
        for url in m.also_at:
            lines.append(f"       the same file also at {url}")
    if others and not show_all:
        best = max(m.score for m in others)
        what = "image is not a copy" if len(others) == 1 else "images are not copies"
        lines.append(f"  ({len(others)} nearest {what}, best score {best:.3f}; --all lists "
                     "them)")
    return lines


@cli.command("dedupe")
@click.option("--crops", is_flag=True,
              help="Also find images that are a part of another (local-feature votes; "
                   "slower).")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV: a row per group member.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@json_option
@click.pass_context
@handle_errors
def dedupe(ctx: click.Context, crops: bool, as_csv: bool, quiet: bool, as_json: bool) -> None:
    """Find groups of duplicates among the catalogue's own images.

    Pairs are confirmed with the same evidence and threshold as a query (every
    orientation); each group names a keeper: the most pixels of content (inside any
    border), then the least border, the most pixels, the largest file (the better
    encoded), the first indexed.
    With --json, one group per line; with --csv, one row per member.

    Example:

    \b
        echoimage dedupe --csv > duplicates.csv
    """
    import csv

    from tqdm import tqdm

    from echoimage.api import DEDUPE_CSV_FIELDS, dedupe_csv_rows

    if as_json and as_csv:
        raise click.UsageError("--json or --csv, not both")
    catalogue = _catalogue(ctx)
    catalogue.open_store()  # a missing store: its message, no bar
    # a bar on a terminal only (None: tqdm's tty check), never into logs or cron mail
    with tqdm(unit="img", disable=True if quiet else None, file=sys.stderr, desc="dedupe",
              dynamic_ncols=True) as bar:
        def progress(done: int) -> None:
            bar.update(done - bar.n)

        result = catalogue.dedupe(crops=crops, progress=progress)
    if as_json:
        for g in result.groups:
            click.echo(json.dumps(g.to_dict()))
        return
    if as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=DEDUPE_CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(dedupe_csv_rows(result))
        return
    info = result.summary()
    cost = f", {info['ms_per_image']:.2f} ms per image" if info["images"] else ""
    click.echo(f"{counted(info['groups'], 'group')} of duplicates, "
               f"{counted(info['duplicates'], 'image')} to remove of {info['images']} "
               f"({info['seconds']:.1f} s{cost})")
    for g in result.groups:
        k = g.keeper
        click.echo(f"group {g.number} ({len(g.members)} images): keep #{k.id} {k.url} "
                   f"({k.width}x{k.height})")
        for m in g.members[1:]:
            ln = m.link
            assert ln is not None
            sim = "-" if math.isnan(ln.ssim) else f"{ln.ssim:.3f}"
            click.echo(f"  #{m.id} {m.url} ({m.width}x{m.height}) score {ln.score:.3f} by "
                       f"{ln.proof}: hash {ln.hash_distance}, ssim {sim}, orb {ln.orb_inliers}"
                       f", {ln.orientation}, via {ln.via}")


@cli.group()
def db() -> None:
    """Manage the store's schema.

    Example:

    \b
        echoimage db upgrade
    """


@db.command("upgrade")
@click.pass_context
@handle_errors
def db_upgrade(ctx: click.Context) -> None:
    """Create or migrate the store's schema to the newest revision.

    Example:

    \b
        ECHOIMAGE_DATABASE_URL=postgresql+psycopg://localhost/echo echoimage db upgrade
    """
    click.echo(f"store at revision {_catalogue(ctx).upgrade()}")


@cli.group()
def catalogue() -> None:
    """Manage the catalogue (its sources, removals) and make catalogues from web pages.

    Example:

    \b
        echoimage catalogue scrape https://shop.example/products --output images.json
    """


@catalogue.command("sources")
@json_option
@click.pass_context
@handle_errors
def catalogue_sources(ctx: click.Context, as_json: bool) -> None:
    """List the recorded catalogue sources with their images by status.

    Example:

    \b
        echoimage catalogue sources
    """
    infos = _catalogue(ctx).sources()
    if as_json:
        for info in infos:
            click.echo(json.dumps(info.__dict__))
        return
    if not infos:
        click.echo("no sources recorded")
    for info in infos:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(info.counts.items())) or "no images"
        kind = info.kind + (f", following {info.follow_pages} links"
                            if info.follow_pages else "")
        click.echo(f"{info.id}. {info.uri} ({kind}): {counts}")


@catalogue.command("remove")
@click.argument("images", nargs=-1)
@click.option("--source", "source", default=None,
              help="Remove every image of this source (its URI, path or number) and forget "
                   "the source.")
@json_option
@click.pass_context
@handle_errors
def catalogue_remove(ctx: click.Context, images: tuple[str, ...], source: str | None,
                     as_json: bool) -> None:
    """Take IMAGES (ids or URLs) out of the catalogue; the index follows at once.

    A removed image stays removed when `index update` finds it in its source again;
    `index build SOURCE` adds it back.

    Example:

    \b
        echoimage catalogue remove 17 /photos/old.jpg
        echoimage catalogue remove --source /photos/archive
    """
    if bool(images) == bool(source):
        raise click.UsageError("give image ids or URLs, or --source SOURCE (not both)")
    catalogue = _catalogue(ctx)
    report = catalogue.remove_source(source) if source else catalogue.remove(*images)
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        what = f" of source {report.source}" if report.source else ""
        n = len(report.removed)
        click.echo(f"removed {n} image{'' if n == 1 else 's'}{what}")
        for ref in report.already:
            click.echo(f"  already removed: {ref}")
        for ref in report.unknown:
            click.echo(f"  unknown: {ref}", err=True)
    if report.unknown:
        ctx.exit(1)


@catalogue.command("scrape")
@click.argument("pages", nargs=-1, required=True)
@click.option("--follow-pages", type=click.IntRange(0, 10_000), default=0, show_default=True,
              help="Also follow up to N same-site links per start page.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("images.json"), show_default=True, help="Catalogue file to write.")
@click.option("--add", is_flag=True, help="Merge into an existing --output: its entries (and "
              "your edits) stay, new image URLs are appended.")
@click.option("--replace", "replace_file", is_flag=True,
              help="Replace an existing --output (without --add or --replace, an existing "
                   "file is refused).")
@click.option("--skip-word", "skip_words", multiple=True,
              help="Skip images whose file name has this word (repeatable; replaces the "
                   "defaults: logo, icon, favicon, category-menu, sprite).")
@click.option("--extension", "extensions", multiple=True,
              help="Keep only image URLs with these extensions, or with none (repeatable, "
                   "e.g. --extension .jpg); by default an image reference is kept whatever "
                   "its extension.")
@click.option("--keep-no-extension", is_flag=True,
              help="Also take a link with no extension around an <img> (<a href=/cdn/full/1>) "
                   "for an image of its own; by default it is a page.")
@click.pass_context
@handle_errors
def catalogue_scrape(ctx: click.Context, pages: tuple[str, ...], follow_pages: int,
                     output: Path, add: bool, replace_file: bool, skip_words: tuple[str, ...],
                     extensions: tuple[str, ...], keep_no_extension: bool) -> None:
    """Collect the image URLs of PAGE_URLs into an images.json: <img>, <picture>, linked
    full-size images, CSS backgrounds, og:image, video posters (see the README).

    An image reference is kept whatever its URL's extension, or none (/cdn/img123); a
    link (<a href>) is an image when its extension is an image's. robots.txt is honoured,
    and requests to one host are ECHOIMAGE_SCRAPE_DELAY seconds apart (1 by default).

    Example:

    \b
        echoimage catalogue scrape https://example.org/gallery --follow-pages 5 --add
    """
    from echoimage.api import ScrapeFilters, scrape_pages, write_catalogue

    if add and replace_file:
        raise click.UsageError("give --add or --replace, not both")
    if output.exists() and not (add or replace_file):
        # refused before any page is read: the file may hold edits and metadata
        raise click.ClickException(f"{output} exists: --add merges the new image URLs into "
                                   "it, --replace replaces it (its edits are lost)")
    filters = ScrapeFilters(keep_no_extension=keep_no_extension)
    if skip_words:
        filters = replace(filters, skip_words=tuple(w.lower() for w in skip_words))
    if extensions:
        exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
        filters = replace(filters, extensions=exts)
    report = scrape_pages(list(pages), follow_pages, filters, settings=_settings(ctx))
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    added = write_catalogue(report.images, output, add)
    outcome = f"{added} new in {output}" if added else f"0 new; {output} unchanged"
    click.echo(f"{counted(len(report.images), 'image URL')} from "
               f"{counted(len(report.pages), 'page')}; {outcome}")


#: exit status of `echoimage scan` when it reported new findings (0: none; 1: it failed)
SCAN_NEW_FINDINGS = 3

#: columns of `scan --csv`
SCAN_CSV_FIELDS = ["new", "verdict", "score", "catalogue_id", "catalogue_url", "page",
                   "image", "first_seen", "last_seen", "gone_at", "gone_reason", "watches",
                   "metadata", "region", "transform", "id"]


def _finding_lines(f: Any) -> list[str]:
    """A finding as text: what it is a copy of, where, and since when."""
    meta = ", ".join(f"{k}: {v}" for k, v in f.metadata.items())
    t = f.transform or {}
    how = [w for w in (f.match.get("orientation") if f.match.get("orientation") not in
                       (None, "identity") else None,
                       f"covers {100 * t['covered_fraction']:.0f}%"
                       if t.get("covered_fraction") is not None else None) if w]
    head = "NEW " if f.new else "    "
    lines = [f"{head}{f.verdict:10s} {f.score:.3f}  #{f.catalogue_id} {f.catalogue_url}"
             + (f"  ({meta})" if meta else "")]
    lines.append(f"      on {f.page}")
    lines.append(f"      image {f.image}" + (f" ({', '.join(how)})" if how else ""))
    seen = f"      first seen {_when(f.first_seen)}, last seen {_when(f.last_seen)}"
    if f.gone_at is not None:
        seen += f"; gone {_when(f.gone_at)}: {f.gone_reason}"
    lines.append(seen)
    return lines


def _when(t: Any) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC") if t is not None else "-"


def _finding_row(f: Any) -> dict[str, Any]:
    d = f.to_dict()
    return {"new": int(f.new), "verdict": f.verdict, "score": d["score"],
            "catalogue_id": f.catalogue_id, "catalogue_url": f.catalogue_url,
            "page": f.page, "image": f.image, "first_seen": d["first_seen"],
            "last_seen": d["last_seen"], "gone_at": d["gone_at"] or "",
            "gone_reason": f.gone_reason or "", "watches": " ".join(f.watches),
            "metadata": json.dumps(f.metadata) if f.metadata else "",
            "region": json.dumps(f.region) if f.region else "",
            "transform": json.dumps(f.transform) if f.transform else "", "id": f.id}


def _scan_summary(report: Any) -> list[str]:
    """A scan's summary as text: pages and images by status, findings, speed, failures."""
    def counts(c: dict[str, int]) -> str:
        return ", ".join(f"{k}: {v:,}" for k, v in sorted(c.items())) or "none"

    what = f"watch {report.watch}" if report.watch else f"scan {report.scan_id}"
    lines = [f"{what}: {counted(sum(report.pages.values()), 'page')} "
             f"({counts(report.pages)}); {counted(sum(report.images.values()), 'image')} "
             f"({counts(report.images)}); {counted(len(report.new), 'new finding')}, "
             f"{report.seen} seen, {len(report.gone)} gone; "
             f"{report.seconds:.1f} s, {report.images_per_s:.1f} images/s"]
    if report.reason:
        lines.append(f"  {report.status}: {report.reason}")
    for f in report.gone:
        lines.append(f"  gone: #{f.catalogue_id} {f.catalogue_url} on {f.page} "
                     f"({f.image}): {f.gone_reason}")
    for item in report.failures[:20]:
        lines.append(f"  {item.status}: {item.kind} {item.url}: {item.reason}")
    if len(report.failures) > 20:
        lines.append(f"  … and {len(report.failures) - 20} more (--json lists them all)")
    for note in report.notes[:20]:
        lines.append(f"  note: {note}")
    if len(report.notes) > 20:
        lines.append(f"  … and {len(report.notes) - 20} more notes (--json lists them all)")
    for item in report.undelivered[:5]:
        lines.append(f"  webhook {item.url}: {item.reason}")
    if report.undelivered:
        lines.append(f"  {len(report.undelivered)} findings not delivered: the next scan "
                     "reports them again")
    return lines


@cli.command("scan")
@click.argument("targets", nargs=-1)
@click.option("--follow-pages", type=click.IntRange(0, 10_000), default=0, show_default=True,
              help="Also scan up to N same-site pages linked from each page target.")
@click.option("--watches", "all_watches", is_flag=True,
              help="Scan every watch (see `echoimage watch`), each with its own targets.")
@click.option("--watch", "watch_names", multiple=True, metavar="NAME",
              help="Scan this watch (repeatable).")
@click.option("--all", "report_all", is_flag=True,
              help="Report every finding seen, not only the new ones.")
@click.option("--notify", metavar="URL", default=None,
              help="POST each new finding as JSON to this webhook, signed with "
                   "ECHOIMAGE_WEBHOOK_SECRET (HMAC-SHA256 of the body).")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV: a header, a row per finding.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar (shown on a terminal).")
@json_option
@click.pass_context
@handle_errors
def scan(ctx: click.Context, targets: tuple[str, ...], follow_pages: int, all_watches: bool,
         watch_names: tuple[str, ...], report_all: bool, notify: str | None, as_csv: bool,
         quiet: bool, as_json: bool) -> None:
    """Find copies of the catalogue's images on TARGETS: page URLs, lists of image URLs,
    images.json files, folders.

    Every image found is fetched (robots.txt honoured; private addresses refused unless
    ECHOIMAGE_SCAN_ALLOWLIST lets them through) and compared with the catalogue; each copy
    is a finding, remembered, so a re-scan fetches only what changed and reports only new
    findings (--all: every one). Pages and images that cannot be read are listed with
    their reason; the scan goes on. With --json, one finding per line, then a summary line
    {"summary": ...}.

    Exit status: 0 no new finding, 3 new findings, 1 the scan failed (no target could be
    read, no catalogue), 2 a usage error.

    Example:

    \b
        echoimage scan https://shop.example/products --follow-pages 20
        echoimage scan --watches --json
    """
    import csv

    from tqdm import tqdm

    if as_json and as_csv:
        raise click.UsageError("--json or --csv, not both")
    if bool(targets) == bool(all_watches or watch_names):
        raise click.UsageError("give TARGETS, or --watches / --watch NAME (not both)")
    writer = None
    if as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=SCAN_CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
    catalogue = _catalogue(ctx)
    bar = tqdm(unit="img", desc="scan", file=sys.stderr, disable=True if quiet else None,
               dynamic_ncols=True, leave=False)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    def show(f: Any) -> None:
        bar.clear()
        if writer is not None:
            writer.writerow(_finding_row(f))
            sys.stdout.flush()  # written before the scan records it as reported
        elif as_json:
            click.echo(json.dumps(f.to_dict()))
        else:
            click.echo("\n".join(_finding_lines(f)))

    try:
        if targets:
            reports = [catalogue.scan(*targets, follow_pages=follow_pages,
                                      report_all=report_all, notify=notify, on_finding=show,
                                      on_progress=progress)]
        else:
            if notify or follow_pages:
                raise click.UsageError("--notify and --follow-pages are a watch's own "
                                       "(`echoimage watch add`)")
            reports = catalogue.scan_watches(*watch_names, report_all=report_all,
                                             on_finding=show, on_progress=progress)
    finally:
        bar.close()
    for report in reports:
        if as_json:
            click.echo(json.dumps({"summary": report.as_dict()}))
        else:
            click.echo("\n".join(_scan_summary(report)), err=writer is not None)
    sys.stdout.flush()
    if not reports:
        click.echo("no watches to scan (add one with `echoimage watch add`)", err=True)
    if any(not r.ok for r in reports):
        ctx.exit(1)
    if any(r.new for r in reports):
        ctx.exit(SCAN_NEW_FINDINGS)


@cli.group()
def watch() -> None:
    """Named scan targets that `echoimage scan --watches` (and the cron script) run.

    Example:

    \b
        echoimage watch add shop-a https://shop-a.example/ --follow-pages 50
        echoimage scan --watches
    """


@watch.command("add")
@click.argument("name")
@click.argument("targets", nargs=-1, required=True)
@click.option("--follow-pages", type=click.IntRange(0, 10_000), default=0, show_default=True,
              help="Also scan up to N same-site pages linked from each page target.")
@click.option("--notify", metavar="URL", default=None,
              help="A webhook that receives each new finding of this watch (signed with "
                   "ECHOIMAGE_WEBHOOK_SECRET).")
@click.pass_context
@handle_errors
def watch_add(ctx: click.Context, name: str, targets: tuple[str, ...], follow_pages: int,
              notify: str | None) -> None:
    """Save TARGETS as the watch NAME (replacing a watch of that name).

    Example:

    \b
        echoimage watch add shop-a https://shop-a.example/ --follow-pages 50
    """
    new = _catalogue(ctx).add_watch(name, *targets, follow_pages=follow_pages, notify=notify)
    click.echo(f"watch {name} {'added' if new else 'replaced'}: "
               f"{counted(len(targets), 'target')}")


@watch.command("list")
@json_option
@click.pass_context
@handle_errors
def watch_list(ctx: click.Context, as_json: bool) -> None:
    """List the watches with their targets, last scan and findings.

    Example:

    \b
        echoimage watch list --json
    """
    watches = _catalogue(ctx).watches()
    if as_json:
        for w in watches:
            click.echo(json.dumps(w.to_dict()))
        return
    if not watches:
        click.echo("no watches (add one with `echoimage watch add NAME TARGET...`)")
    for w in watches:
        last = w.last_scan
        when = (f"last scan {last['started_at']} {last['status']}" if last else "never scanned")
        extra = f", follows {counted(w.follow_pages, 'page')}" if w.follow_pages else ""
        hook = f", notifies {w.notify}" if w.notify else ""
        click.echo(f"{w.name}: {' '.join(w.targets)}{extra}{hook}; {when}; "
                   f"{counted(w.findings, 'finding')}")


@watch.command("remove")
@click.argument("name")
@click.pass_context
@handle_errors
def watch_remove(ctx: click.Context, name: str) -> None:
    """Forget the watch NAME (its findings stay).

    Example:

    \b
        echoimage watch remove shop-a
    """
    if not _catalogue(ctx).remove_watch(name):
        raise click.ClickException(f"no watch named {name}")
    click.echo(f"watch {name} removed")


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port to listen on.")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Serving processes, sharing the memory-mapped index (default: one per "
                   "core). Env: ECHOIMAGE_SERVE_WORKERS.")
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="Queries each process runs at once (default: its share of the cores). "
                   "Env: ECHOIMAGE_QUERY_THREADS.")
@click.option("--queue", type=click.IntRange(0, 100_000), default=None,
              help="Queries each process lets wait; past that a search gets 503 with "
                   "Retry-After at once (default 8). Env: ECHOIMAGE_MAX_WAITING.")
@click.option("--access-log", type=click.Choice(["json", "text", "off"]), default=None,
              help="One JSON line per request (default), uvicorn's text line, or none. "
                   "Env: ECHOIMAGE_ACCESS_LOG.")
@cluster_option
@shards_option
@click.pass_context
@handle_errors
def serve(ctx: click.Context, host: str, port: int, workers: int | None, threads: int | None,
          queue: int | None, access_log: str | None, cluster: str | None,
          shards: int | None) -> None:
    """Serve the web page and the JSON API (POST /api/search, docs at /docs), with
    /healthz, /readyz and /metrics for operations.

    It listens on 127.0.0.1 unless told otherwise. On another address without
    ECHOIMAGE_SEARCH_TOKEN it warns: anyone who reaches the port can search; put it behind
    a reverse proxy, or set a token.

    Example:

    \b
        echoimage serve --port 8000
        echoimage serve --workers 4 --queue 16 --port 8000
        ECHOIMAGE_SEARCH_TOKEN=s3cret echoimage serve --host 0.0.0.0 --port 8000
    """
    from echoimage.web.app import serve as run_server
    from echoimage.web.config import WebSettings

    given = {"serve_workers": workers, "query_threads": threads, "max_waiting": queue,
             "access_log": access_log}
    web = WebSettings(**{k: v for k, v in given.items() if v is not None})
    run_server(_with(_settings(ctx), cluster=cluster, index_shards=shards), host, port, web)


@cli.command("bench")
@click.argument("photo_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("bench-out"), show_default=True, help="Output directory.")
@click.option("--limit", type=int, default=None, help="Query only N catalogue photos.")
@click.option("--no-scale", is_flag=True, help="Skip the 10k/100k padded-index timings.")
@click.option("--no-peers", is_flag=True,
              help="Skip the side-by-side run with PDQ and perception's PHash.")
@click.option("--no-hard", is_flag=True, help="Skip the hard edits (memes, collages, ...).")
@click.option("--scan", is_flag=True,
              help="Run the scan benchmark instead: a site of copies and held-out photos on "
                   "127.0.0.1 scanned against the catalogue padded to --scan-scale entries "
                   "(scan.json/scan.md).")
@click.option("--scan-scale", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Scan benchmark: catalogue entries after padding.")
@click.option("--scan-data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None,
              help="Scan benchmark: an existing padded data directory (the load benchmark's "
                   "DIR/data), its photos the catalogue and the rest held out.")
@click.option("--scan-site", type=(click.IntRange(min=1), click.IntRange(min=1),
                                   click.IntRange(min=0)),
              default=(2000, 100, 200), show_default=True, metavar="IMAGES PAGES COPIES",
              help="Scan benchmark: the site's images, pages and copies among the images.")
@click.option("--scan-engine-images", type=click.IntRange(min=1), default=300,
              show_default=True,
              help="Scan benchmark: the site images the engine alone answers (a seeded "
                   "sample) for the throughput baseline.")
@handle_errors
def bench(photo_dir: Path, out: Path, limit: int | None, no_scale: bool,
          no_peers: bool, no_hard: bool, scan: bool, scan_scale: int,
          scan_data: Path | None, scan_site: tuple[int, int, int],
          scan_engine_images: int) -> None:
    """Run the copy-detection benchmark on a folder of photos; writes bench.json/bench.md.

    Beside EchoImage it runs the peers that are installed (PDQ, perception's PHash; `make
    venv` installs them) on the transforms of perception's benchmark, and says which it
    skipped; then the hard edits on the same catalogue and held-out photos. With --scan,
    the scan benchmark instead (scripts/bench_scan.py has the same, and more options).

    Examples:

    \b
        echoimage bench ../shared/datasets/bsds500 --out bench-out --limit 100 --no-scale
        echoimage bench ../shared/datasets/bsds500 --out bench-out --scan --scan-scale 10000
    """
    try:
        from echoimage_bench import render_markdown, run_benchmark
    except ImportError as exc:
        raise EchoImageError(
            "the benchmark is not installed: it is the separate package in a checkout's "
            "bench/ (`make venv` installs it, or pip install -e ./bench)") from exc

    if scan:
        from echoimage_bench.scan import render_scan_markdown, run_scan_benchmark

        images, pages, copies = scan_site
        try:
            result = run_scan_benchmark(
                photo_dir, out, images=images, pages=pages, copies=copies, scale=scan_scale,
                data_dir=scan_data, engine_images=scan_engine_images)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        click.echo(render_scan_markdown(result))
        return
    kwargs: dict[str, Any] = {"limit": limit, "peers": not no_peers, "hard": not no_hard}
    if no_scale:
        kwargs["scale"] = ()
    click.echo(render_markdown(run_benchmark(photo_dir, out, **kwargs)))


def main() -> None:
    """Console entry point."""
    cli(prog_name="echoimage")
