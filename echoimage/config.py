"""Settings: the only home of defaults. Every field can be set as ECHOIMAGE_<NAME>."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated

from pydantic import SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _version() -> str:
    """EchoImage's installed version (for the user agent)."""
    try:
        return version("echoimage")
    except PackageNotFoundError:  # pragma: no cover - run from a bare source tree
        return "0"


def comma_separated(value: object) -> object:
    """A list setting given as one string (an environment variable): its comma- (or
    semicolon-) separated parts, stripped, the empty ones dropped."""
    if isinstance(value, str):
        return [part.strip() for part in value.replace(";", ",").split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Run-time settings of EchoImage (environment variables ``ECHOIMAGE_*``)."""

    model_config = SettingsConfigDict(env_prefix="ECHOIMAGE_", extra="ignore")

    data_dir: Path = Path("echoimage-data")
    database_url: str | None = None

    # decoding
    max_pixels: int = 64_000_000
    max_bytes: int = 64 * 1024 * 1024

    # features
    thumb_size: int = 256
    thumb_quality: int = 50  # JPEG quality of stored thumbnails (see store/codec.py)
    work_size: int = 512
    # queries keep more pixels: a copy shown small inside a larger picture (a screenshot)
    # still has enough resolution for ORB
    query_work_size: int = 1024
    orb_features: int = 1500  # per catalogue image, stored
    # colour: each image's RGB version has its longest side at most colour_size; it makes
    # the colour signature and, as a JPEG at colour_quality, the preview the web page shows
    # (bsds500: ~4 KB per image; see echoimage/features/colour.py and README, "Colour")
    colour_size: int = 192
    colour_quality: int = 70
    # keypoints of the whole query, detected once: overlaid text, stickers and frames have
    # the strongest corners and would take most of a smaller set (a spread prefix of these
    # 1,500 reaches the photo under a caption); content boxes and collage cells take fewer
    query_orb_features: int = 1500
    box_orb_features: int = 500

    # results per query when none is asked for, and the most a query may ask for (CLI,
    # HTTP API, web page and library alike)
    default_k: int = 5
    max_k: int = 50

    # shortlist and re-rank
    shortlist_k: int = 32
    rerank_n: int = 5
    # local-feature shortlist (crops, borders, screenshots)
    local_per_image: int = 150
    local_flat_max: int = 20_000
    local_nprobe: int = 8
    local_wide_nprobe: int = 16  # lists searched under a two-level quantizer
    local_query_descriptors: int = 200
    local_max_distance: int = 48
    local_neighbours: int = 2
    local_min_lists: int = 256
    # IVF lists up to which the quantizer is flat (2·√n lists, local_nprobe searched);
    # beyond, two-level (4·√n lists, local_wide_nprobe): 0, every IVF index
    local_flat_quantizer_max: int = 0
    vote_n: int = 4
    # content boxes (a picture inside a border, a screenshot or a captioned copy)
    max_boxes: int = 3
    box_k: int = 4
    # an image voted for is re-ranked only with at least min_votes votes from one group of
    # query keypoints (calibrated by scripts/bench_calibrate.py; README, "Scores")
    min_votes: int = 3
    # query keypoints (a spread prefix) matched against each candidate: a hash neighbour,
    # an image voted for
    rerank_descriptors: int = 300
    vote_rerank_descriptors: int = 600
    # catalogue keypoints (a spread prefix of the stored ones) a candidate is matched with;
    # when no candidate is a copy yet, the deep_rerank_n most promising are matched again
    # with all of them
    rerank_keypoints: int = 500
    deep_rerank_n: int = 6
    ratio_test: float = 0.8
    ransac_px: float = 6.0
    # a result with proof (same bytes, pHash within 5 bits of a small, crushed or noisy
    # query, or 8 or more RANSAC inliers spread over the match; either leaving the
    # catalogue image's detail shown) is a copy when its score,
    # the probability that it is one, reaches this; chosen by scripts/bench_calibrate.py
    # for a stated false-match rate (see echoimage.search.evidence and README, "Scores").
    # De-duplication decides its pairs the same way.
    duplicate_threshold: float = 0.5
    # the first vote search takes each group's first vote_probe_descriptors keypoints; the
    # cascade stops after it unless some image got stop_votes votes or some candidate has
    # stop_inliers RANSAC inliers or a pHash within stop_hash bits (in the hash block below;
    # a copy is still plausible: the next local_query_descriptors vote, then the deep round
    # re-matches the promising candidates). scripts/bench_calibrate.py on bsds500 (5,300
    # copies, 3,200 held-out queries): these lose 14 copies that the full cascade finds
    # (0.26%) and let 27% of the held-out queries go on (README, "Scores")
    vote_probe_descriptors: int = 64
    # ...probing this share of the IVF lists a vote search probes (the nearest ones) in a
    # catalogue of vote_probe_lists_entries or more (smaller ones probe every list): the
    # first votes are every no-copy query's cost, and most of it is the scan of the lists.
    # scripts/bench_calibrate.py --data: half the lists lost no copy at 10k and 100k
    # entries and cut the held-out queries' vote round by a third at 10k; among 400
    # entries it lost 3 more of 1,590 (README, "Scores"). A query that goes on searches
    # the first keypoints' other lists, and the same share of its next keypoints' lists
    vote_probe_lists: float = 0.5
    vote_probe_lists_entries: int = 10_000
    stop_votes: int = 5
    stop_inliers: int = 5
    # a query whose grey levels are crushed into a few gets a view with its histogram
    # equalised when the other rounds find no copy (echoimage.features.photometric): the
    # entropy of its histogram under crushed_bits and the middle 90% of its pixels spanning
    # fewer than crushed_span levels (bsds500: 7.3 bits at the median, 4.9 at the 1st
    # percentile; perception's gamma 0.01-0.02, 4.5 at most. A screenshot of a page has few
    # levels too but a wide span: bsds500 in the benchmark's pages 146 levels at the
    # median; gamma to near-white 8, haze 48)
    normalise: bool = True
    crushed_bits: float = 5.0
    crushed_span: int = 100
    # a pHash within the model's few bits proves a copy by itself only where the query's
    # own detail cannot: a view at most hash_proof_max_side pixels on its longest side (in
    # the query's own pixels), one whose grey levels are crushed (above), or a query
    # drowned in colour noise (its colour channels' fine differences, median absolute,
    # at least noisy_chroma: bsds500 at most 5, under perception's heavy noise 21.6 and
    # more). A larger, clean view must agree geometrically too: different products
    # photographed alike hash within 5 bits (BENCHMARKS.md, "Products photographed alike").
    # noisy_chroma 0 counts every query as noisy: a near hash proves a copy by itself again
    hash_proof_max_side: int = 320
    noisy_chroma: float = 12.0
    # verdicts (see echoimage.search.verdict): a copy showing less than this fraction of
    # the catalogue image's area is called a `partial` copy
    partial_below: float = 0.5
    # colour: a copy whose colour_distance to the catalogue image exceeds colour_threshold
    # is called `recoloured` instead of `duplicate` when colour_sensitive is on. 0.2 from
    # `echoimage bench` on bsds500 (100 photos): 98.3% of recoloured copies called so,
    # 0.9% of same-colour whole-photo copies (brightened ones) and none of 500 parts; at
    # 0.25: 97.3% and 0.4% (README, "Colour")
    colour_sensitive: bool = False
    colour_threshold: float = 0.2
    # answers: the copies alone, not the nearest images that are not copies too (faster:
    # they are not scored to be shown; SearchEngine.query_image); a query may say otherwise
    copies_only: bool = False

    # --- hash distances: the one home of every pHash and dHash threshold ------------------
    # Hamming distances between 64-bit hashes. A copy's pHash is near its original's (the
    # copies only the hash finds, 128 px thumbnails, within 2 bits); chance neighbours come
    # close as a catalogue grows (at a million images, some unrelated image within 8 bits of
    # one query in ~2%), which is why no threshold here makes a copy by itself: they choose
    # what is looked at. The distance within which a hash alone proves a copy (5 bits) is
    # part of the versioned evidence model (echoimage/search/evidence.py, MODEL.rule), and
    # how the distance counts in a score is part of its features, not a setting; which
    # queries it may prove alone is (hash_proof_max_side, noisy_chroma above).
    # the query's shortlist: hash neighbours farther than this are not re-ranked
    max_hash_distance: int = 26
    # a candidate's nearest orientation is taken as fixed within orientation_max_distance;
    # up to orientation_guess_distance the query as it is is tried too, past it only that
    orientation_max_distance: int = 16
    orientation_guess_distance: int = 22
    # content boxes and collage cells propose their box_k nearest within this
    box_max_distance: int = 12
    # the stop rule (stop_votes above): a candidate within stop_hash bits is still a
    # plausible copy in a catalogue of up to ~3,000 entries (stop_hash_entries, to the
    # nearest tenfold), stop_hash_per_decade bits fewer for each tenfold beyond: chance
    # neighbours come closer as a catalogue grows. scripts/bench_calibrate.py: the nearest
    # pHash of a held-out query's views was 14-20 bits away (median 16) among 400 entries,
    # 10-16 (median 12) among 100,000, where 14 bits let 99.9% of them go on and 10 bits
    # 30%, at 6 copies lost of 1,060 (README, "Scores")
    stop_hash: int = 14
    stop_hash_entries: int = 1000
    stop_hash_per_decade: int = 2
    # dedupe: pHash bits within which a catalogue image's views propose a pair (the whole
    # image as it is: wide_radius; 14 found 4 in 5 of the 5° rotations against 3 in 5 at
    # 12, at 0.3 more candidates per image at 100k)
    dedupe_hash_radius: int = 12
    dedupe_wide_radius: int = 14
    # ...and from dedupe_dhash_from bits of pHash on, dHash within dedupe_dhash_max (copies:
    # ≤ 17; chance pHash neighbours: 19-31, median 25, on bsds500 and its padding)
    dedupe_dhash_from: int = 10
    dedupe_dhash_max: int = 18

    # indexing
    workers: int = 0
    # the niceness the feature workers of a build or an update add to their own (0-19; 0:
    # none): a server on the same machine answers first, and the workers take the cores
    # it leaves idle (an idle machine gives them the same time)
    worker_nice: int = 10
    # a Dask cluster for builds, updates and the sharded vote search: tcp://HOST:8786, or
    # local:N for a LocalCluster of N worker processes (see echoimage.cluster)
    cluster: str | None = None
    cluster_shard_size: int = 32  # images per build task on the cluster
    index_shards: int = 1  # with a cluster: actors holding the local-feature index
    #: a long build or update writes what it changed to the index files every this many
    #: changed rows (so a serving process's in-memory delta stays small)
    index_flush_rows: int = 5000
    batch_size: int = 64
    http_timeout: float = 30.0
    http_concurrency: int = 32
    http_per_host: int = 8
    # how EchoImage names itself to the sites it fetches from (robots.txt groups for
    # "EchoImage" apply to it)
    user_agent: str = f"EchoImage/{_version()} (+https://github.com/echoimage/echoimage)"
    # the scraper: seconds between two requests to one host (a robots.txt Crawl-delay
    # that asks for more is honoured)
    scrape_delay: float = 1.0

    # scans (`echoimage scan`, echoimage.catalogue.scan): threads comparing scanned images
    # with the catalogue (0: one per core), images fetched ahead of them, and the seconds
    # between the starts of two image requests to one host (pages keep scrape_delay)
    scan_threads: int = 0
    scan_queue: int = 16
    scan_image_delay: float = 0.05
    # hosts (host, host:port), addresses or networks (10.1.0.0/16) scans may reach although
    # they resolve to a loopback, private or otherwise non-public address (every other one
    # is refused: a scanned page must not make EchoImage fetch from the inside); comma-
    # separated in ECHOIMAGE_SCAN_ALLOWLIST
    scan_allowlist: Annotated[list[str], NoDecode] = []
    # the picture of a found image kept for the findings page: longest side, JPEG quality
    scan_picture_size: int = 384
    scan_picture_quality: int = 80
    # webhooks (`scan --notify URL`, a watch's notify URL): every new finding is POSTed as
    # JSON, signed with HMAC-SHA256 of the body under webhook_secret (the
    # X-EchoImage-Signature-256 header), tried webhook_retries more times on a network
    # error, a 429 or a 5xx, each try within webhook_timeout seconds
    webhook_secret: SecretStr | None = None
    webhook_retries: int = 3
    webhook_timeout: float = 10.0

    @field_validator("scan_allowlist", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return comma_separated(value)

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("scrape_delay", "scan_image_delay", "scan_threads", "webhook_retries",
                     "stop_hash_per_decade", "hash_proof_max_side", "noisy_chroma", "workers")
    @classmethod
    def _not_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must not be negative")
        return value

    @field_validator("worker_nice")
    @classmethod
    def _niceness(cls, value: int) -> int:
        if not 0 <= value <= 19:
            raise ValueError("must be a niceness from 0 to 19")
        return value

    @field_validator("vote_probe_lists")
    @classmethod
    def _share(cls, value: float) -> float:
        if not 0 < value <= 1:
            raise ValueError("must be a share: more than 0, at most 1")
        return value

    @field_validator("max_pixels", "max_bytes", "thumb_size", "work_size", "shortlist_k",
                     "default_k", "max_k", "scan_queue", "scan_picture_size",
                     "webhook_timeout", "stop_hash_entries", "vote_probe_lists_entries",
                     "batch_size", "http_concurrency", "http_per_host")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @property
    def db_url(self) -> str:
        """The SQLAlchemy URL of the store (SQLite in the data directory by default)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'echoimage.sqlite3').resolve()}"

    @property
    def index_dir(self) -> Path:
        """Directory of the derived FAISS indexes and their manifests."""
        return self.data_dir / "index"

    def ensure_dirs(self) -> None:
        """Create the data directory and the index directory."""
        self.index_dir.mkdir(parents=True, exist_ok=True)
