"""Pydantic models of the JSON API. `MatchOut` is `echoimage.types.Match.to_dict()`, the
schema `echoimage query --json` prints."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt


class TransformOut(BaseModel):
    """How the query maps onto the catalogue image (from the RANSAC homography)."""

    scale: float = Field(description="catalogue pixels per query pixel")
    rotation_deg: float
    mirror: bool
    covered_fraction: float = Field(description="share of the catalogue image the query covers")


class MatchOut(BaseModel):
    """One ranked result, in the field order of `echoimage query --json`.

    Fields the engine adds later pass through unchanged (``extra="allow"``).
    """

    model_config = ConfigDict(extra="allow")

    id: int
    url: str
    score: float = Field(description="the probability that it is a copy, given its evidence")
    duplicate: bool = Field(description="a copy: proof (the same bytes, a pHash within 5 "
                                        "bits of a small, crushed or noisy query, or "
                                        "geometric agreement; either showing the "
                                        "catalogue image's detail) and a score at the "
                                        "threshold")
    exact: bool = Field(description="same bytes (sha256) as the query")
    ssim: float
    orb_matches: int
    orb_inliers: int
    hash_distance: int = Field(description="pHash Hamming distance in the matched orientation")
    orientation: str
    votes: int = Field(0, description="local-feature votes (crops, borders, screenshots)")
    sha256: str
    region: list[list[float]] | None = Field(
        None, description="the query's outline in the catalogue image's original pixels")
    transform: TransformOut | None = None
    query_box: list[float] | None = Field(
        None, description="x, y, w, h of the part of the query that matched (None: all of it)")
    verdict: str = Field(description="exact, duplicate, partial (a part of the catalogue "
                                     "image), recoloured (colour-sensitive searches) or "
                                     "different (not a copy)")
    colour_distance: float | None = Field(
        None, description="0 (same colours) to 1; null for images indexed before colours "
                          "were kept")
    metadata: dict[str, Any] = Field(default_factory=dict,
                                     description="the catalogue entry's extra keys")
    why: str = Field("", description="a few words on why it is a copy, or why not")
    also_at: list[str] = Field(default_factory=list,
                               description="of a copy, the other catalogue entries with the "
                                           "same bytes (results are one per content)")


class SearchRequest(BaseModel):
    """JSON body of POST /api/search (a URL query)."""

    url: str
    #: a JSON integer: true, 1.5, 2.0 and "3" are refused, not coerced
    k: StrictInt | None = Field(None, ge=1, description="number of results")
    colour_sensitive: StrictBool | None = Field(
        None, description="call copies in clearly different colours `recoloured` (default: "
                          "the server's ECHOIMAGE_COLOUR_SENSITIVE)")
    copies_only: StrictBool | None = Field(
        None, description="answer with the copies alone, not the nearest images that are "
                          "not copies (faster; default: the server's ECHOIMAGE_COPIES_ONLY)")


class SearchLinks(BaseModel):
    """Where to fetch the images of a search (``{id}``: a result's id)."""

    query_image: str
    thumbnail: str
    preview: str
    match_image: str
    results: str


class SearchResponse(BaseModel):
    """Results of one query: the `query --json` object plus the query token and timings."""

    query: str
    found: bool = Field(description="true when some result is a copy (verdict other than "
                                    "different); false: no copy found")
    results: list[MatchOut]
    copies_only: bool = Field(description="true: the results are the copies alone (none "
                                          "when no copy was found); false: the k nearest")
    query_token: str = Field(description="names this query in /api/matches/{token}/{id}.png")
    expires_in_s: float
    width: int
    height: int
    format: str
    timings_ms: dict[str, float]
    links: SearchLinks


class ImageInfo(BaseModel):
    """Metadata, provenance and status of a catalogue image."""

    model_config = ConfigDict(extra="allow")

    id: int
    url: str
    status: str
    reason: str | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    bytes: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    source: str | None = None
    created_at: str | None = None
    indexed_at: str | None = None
    gone_at: str | None = None
    thumbnail: str | None = Field(None, description="URL of the stored thumbnail, if indexed")


class IndexStats(BaseModel):
    """The shortlist index the server answers from."""

    entries: int
    seq: int = Field(description="the store's change number the answers agree with")
    files_seq: int = Field(description="the change number the index files include (the rest "
                                       "is searched from memory)")
    parts: int = Field(description="base, segments and in-memory delta searched")
    refreshed_at: str
    in_memory: bool = Field(description="true when the index could not be written (a "
                                        "read-only store) and was built in memory")


class ServerStats(BaseModel):
    """This server process."""

    uptime_s: float
    queries: int
    failed_queries: int
    running: int
    waiting: int
    query_threads: int
    max_waiting: int
    pid: int  # the serving process that answered (one of several with --workers)
    cached_queries: int
    cache_ttl_s: float


class RunInfo(BaseModel):
    """An indexing run (`index build`, `index update`, a catalogue job), as `echoimage index
    status --json` shows it."""

    id: int
    kind: str
    status: str = Field(description="running, ok, failed or interrupted")
    started_at: str
    duration_s: float | None = Field(description="null while running or when it never "
                                                 "recorded its end")
    counts: dict[str, int]
    sources: list[str]
    reason: str | None = Field(description="why it failed or was interrupted, in one line")
    process: str | None = Field(description="while running: the process doing it")


class StatsResponse(BaseModel):
    """Catalogue counts by status, the index, the server and the latest indexing runs."""

    images: dict[str, int]
    total_images: int
    index: IndexStats
    server: ServerStats
    runs: list[RunInfo] = Field(description="the latest runs, newest first")


class HealthResponse(BaseModel):
    """Liveness and the size of the loaded index (None while it is loading)."""

    status: str
    index_entries: int | None


class ReadyResponse(BaseModel):
    """Readiness: `ready` once the index is loaded (200); `loading` or `failed` with the
    reason (503) before."""

    status: str
    index_entries: int | None = None
    detail: str | None = None


class ErrorResponse(BaseModel):
    """Every error: what went wrong, in one line."""

    detail: str
