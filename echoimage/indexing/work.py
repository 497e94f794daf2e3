"""One catalogue image's work: read or fetch its bytes, decode them, extract features.

Everything here runs in feature workers (processes of the runner's pool, or Dask tasks):
it is picklable, and a failure comes back as a status, never an exception.
"""

from __future__ import annotations

import hashlib
import logging
import os
import select
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from echoimage.errors import DecodeError, ImageTooLargeError, NotAnImageError
from echoimage.features.decode import decode_image, sniff_format
from echoimage.features.extract import Stages, extract_features
from echoimage.fetch.local import LocalStatus, file_marker, read_local
from echoimage.store.codec import FeatureRecord, encode_features
from echoimage.types import FetchStatus, Outcome, Status

if TYPE_CHECKING:
    from echoimage.config import Settings
    from echoimage.fetch.client import FetchResult

log = logging.getLogger(__name__)


def _exit_with(pid: int) -> None:
    """Exit this worker as soon as process pid (the run that started it) is gone, so that
    kill -9 of a build leaves no worker behind. A pidfd becomes readable when the process
    exits (no polling, no pid reuse); where there is none, poll once a second."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])
        os._exit(1)
    while True:
        time.sleep(1.0)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:
            pass


def init_worker(main_pid: int, max_pixels: int, nice: int = 0) -> None:
    """Start-up of a feature worker process: exit with the run, leave Ctrl-C to the run
    (which stops the pool; a worker's own KeyboardInterrupt would print a traceback), one
    OpenCV thread, Pillow's bomb guard at the run's pixel cap (see decode), and `nice`
    added to its niceness (Settings.worker_nice: a server on the machine answers first)."""
    import cv2

    from echoimage.features.decode import agree_pillow_limit

    threading.Thread(target=_exit_with, args=(main_pid,), daemon=True,
                     name="exit-with-main").start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)
    agree_pillow_limit(max_pixels)
    if nice > 0 and hasattr(os, "nice"):
        try:
            os.nice(nice)
        except OSError as exc:  # a container may forbid it: the worker runs as it is
            log.debug("cannot lower the feature worker's priority: %s", exc)


def noop(_: int) -> None:
    """A task that only makes the pool start its workers."""


@dataclass(frozen=True)
class FeatureParams:
    """What a feature worker needs (picklable), built from Settings."""

    max_pixels: int
    work_size: int
    thumb_size: int
    orb_features: int
    thumb_quality: int
    colour_size: int
    colour_quality: int

    @classmethod
    def from_settings(cls, settings: Settings) -> FeatureParams:
        """The feature parameters of these settings."""
        return cls(settings.max_pixels, settings.work_size, settings.thumb_size,
                   settings.orb_features, settings.thumb_quality, settings.colour_size,
                   settings.colour_quality)

    @property
    def key(self) -> str:
        """What a store row records of the parameters its features were extracted with
        (the pixel cap only decides whether an image is refused, and the thumbnail's JPEG
        quality how it is stored, not the features). The colour preview's size and quality
        are left out too: they change only what the page shows, and rows indexed before
        colour was kept are not re-extracted for it (their colour_distance is None)."""
        return f"work{self.work_size}-thumb{self.thumb_size}-orb{self.orb_features}"


@dataclass(frozen=True)
class WorkItem:
    """One catalogue image to (re)index, with what the store already knows of it: the
    validators and sha256 of the bytes last processed (indexed, or failed for
    themselves), given only where those stand for the image (None: fetched in full)."""

    image_id: int
    url: str
    etag: str | None = None
    last_modified: str | None = None
    sha256: str | None = None  # known content hash: same bytes → "unchanged", no feature work
    was_indexed: bool = False
    reextract: bool = False  # its stored features were made with other parameters
    recheck: Status | None = None  # it failed for its bytes (RECHECKED): checked again


@dataclass(frozen=True)
class WorkResult:
    """What the fetch and feature stages made of one catalogue image."""

    image_id: int
    status: Status | Outcome  # Outcome.UNCHANGED or the image's new store status
    reason: str | None = None
    sha256: str | None = None
    nbytes: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    record: FeatureRecord | None = None
    cpu_s: float = 0.0
    #: the feature worker's CPU seconds by stage (read, sha256, decode, thumbnail, hashes,
    #: orb, colour signature, encode): they add up to cpu_s
    stages: dict[str, float] | None = None
    #: an image refused over the pixel cap: its (width, height), for `index update` to
    #: fetch it again once the cap allows it
    size: tuple[int, int] | None = None


def process_bytes(image_id: int, data: bytes, params: FeatureParams,
                  etag: str | None = None, last_modified: str | None = None,
                  known_sha256: str | None = None, stages: Stages | None = None
                  ) -> WorkResult:
    """Decode bytes and extract features; a failure comes back as a status, never raised.
    The result's stages split its CPU time (from stages, if given: a caller's own laps
    before this one)."""
    stages = stages if stages is not None else Stages()
    sha = hashlib.sha256(data).hexdigest()
    stages.lap("sha256")

    def result(status: Status | Outcome, reason: str | None = None,
               record: FeatureRecord | None = None,
               size: tuple[int, int] | None = None) -> WorkResult:
        return WorkResult(image_id, status, reason, sha, len(data), etag, last_modified,
                          record, stages.total, stages.seconds, size)

    if known_sha256 is not None and sha == known_sha256:
        return result(Outcome.UNCHANGED)
    try:
        img = decode_image(data, params.max_pixels, params.work_size, params.colour_size)
        stages.lap("decode")
        feats = extract_features(img, params.thumb_size, params.orb_features, stages)
    except DecodeError as exc:
        stages.lap("decode")
        if isinstance(exc, ImageTooLargeError):
            return result(Status.TOO_LARGE, str(exc), size=exc.size)
        if isinstance(exc, NotAnImageError) and sniff_format(data) is None:
            return result(Status.NOT_AN_IMAGE, str(exc))
        return result(Status.DECODE_ERROR, str(exc))
    except Exception as exc:  # noqa: BLE001 - one image's surprise must not end the run
        stages.lap("decode")
        log.warning("feature extraction failed on image %d: %s: %s", image_id,
                    type(exc).__name__, exc)
        log.debug("feature extraction failed on image %d", image_id, exc_info=True)
        return result(Status.DECODE_ERROR,
                      f"feature extraction failed: {type(exc).__name__}: "
                      f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
    record = encode_features(image_id, sha, len(data), feats, etag, last_modified,
                             params.key, params.thumb_quality, params.colour_quality)
    stages.lap("encode")
    return result(Status.INDEXED, record=record)


def process_path(item: WorkItem, params: FeatureParams, max_bytes: int) -> WorkResult:
    """Read a local file and process it; a missing, unreadable or special file is a
    status (never waited on)."""
    etag = file_marker(item.url)
    if etag is not None and etag == item.etag:
        return WorkResult(item.image_id, Outcome.UNCHANGED, etag=etag)
    stages = Stages()
    got = read_local(item.url, max_bytes)
    stages.lap("read")
    if got.data is None:
        if got.status == LocalStatus.NOT_FOUND:
            status = Status.GONE if item.was_indexed else Status.MISSING
        else:
            status = _LOCAL_STATUS[got.status]
        if status == Status.TOO_LARGE:  # its size, and the marker of the file refused
            return WorkResult(item.image_id, status, got.reason, nbytes=got.size, etag=etag)
        return WorkResult(item.image_id, status, got.reason)
    return process_bytes(item.image_id, got.data, params, etag, None, item.sha256, stages)


#: store status of a local file that could not be read (a missing one: see process_path)
_LOCAL_STATUS = {LocalStatus.NOT_A_FILE: Status.NOT_AN_IMAGE,
                 LocalStatus.TOO_LARGE: Status.TOO_LARGE,
                 LocalStatus.UNREADABLE: Status.MISSING}


def fetched_result(item: WorkItem, fres: FetchResult) -> WorkResult | None:
    """The result of a fetch that brought no bytes to process (not modified, or failed);
    None when its bytes are to be processed."""
    if fres.status == FetchStatus.OK and fres.data is not None:
        return None
    if fres.status == FetchStatus.NOT_MODIFIED:
        return WorkResult(item.image_id, Outcome.UNCHANGED, etag=fres.etag,
                          last_modified=fres.last_modified)
    status = _STORE_STATUS.get(fres.status, Status.HTTP_ERROR)
    if status in (Status.NOT_AN_IMAGE, Status.TOO_LARGE):
        # refused for the bytes the server has now: their ETag, for an update to ask again
        # conditionally (and a body over the cap, its size). Not their Last-Modified: a
        # page served instead of an image (an error page, dated now) would make the image
        # itself, older, answer 304 until it changed
        return WorkResult(item.image_id, status, fres.reason or fres.status,
                          nbytes=fres.nbytes, etag=fres.etag)
    return WorkResult(item.image_id, status, fres.reason or fres.status)


#: the store status of a failed fetch (any other: http-error, retried by later runs)
_STORE_STATUS = {
    FetchStatus.GONE: Status.GONE, FetchStatus.TIMEOUT: Status.TIMEOUT,
    FetchStatus.TOO_LARGE: Status.TOO_LARGE, FetchStatus.NOT_AN_IMAGE: Status.NOT_AN_IMAGE,
    FetchStatus.BAD_URL: Status.BAD_URL, FetchStatus.REFUSED: Status.BAD_URL,
    FetchStatus.REDIRECT_LOOP: Status.REDIRECT_ERROR,
    FetchStatus.TOO_MANY_REDIRECTS: Status.REDIRECT_ERROR,
}
