"""Settings of the web server only (environment variables ``ECHOIMAGE_*``).

The catalogue's settings (data directory, store, feature and decoder limits, how many
results a query gets: default_k and max_k) stay in `echoimage.config.Settings`; this class
adds what only `echoimage serve` needs.
"""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class WebSettings(BaseSettings):
    """Limits and policy of the HTTP server.

    ``ECHOIMAGE_URL_ALLOWLIST`` is a comma-separated list of host names (``images.local``),
    ``host:port`` pairs (``127.0.0.1:8080``, ``[::1]:8080``), IP addresses or CIDR networks
    (``10.1.0.0/16``) that URL queries may reach although they resolve to a loopback,
    private, link-local or otherwise non-public address.
    """

    model_config = SettingsConfigDict(env_prefix="ECHOIMAGE_", extra="ignore")

    # uploads and URL queries
    max_upload_bytes: int = 20 * 1024 * 1024
    url_allowlist: Annotated[list[str], NoDecode] = []
    url_timeout: float = 10.0
    url_max_redirects: int = 5

    # query execution: threads running queries at once, and queries allowed to wait
    query_threads: int = 0  # 0: one per core
    max_waiting: int = 64

    # the short-lived in-memory cache of recent queries (for the match images)
    cache_ttl: float = 600.0
    cache_entries: int = 64

    # the management API (adding pages and images, removing images) exists only with a
    # token; searching needs one only when search_token is set
    api_token: SecretStr | None = None
    search_token: SecretStr | None = None
    job_threads: int = 2  # background jobs (catalogue changes, dedupe) running at once
    max_api_urls: int = 1000  # image URLs one POST /api/catalogue/images may add

    @field_validator("url_allowlist", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.replace(";", ",").split(",") if part.strip()]
        return value

    @field_validator("max_upload_bytes", "url_timeout", "cache_entries", "cache_ttl")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @field_validator("api_token", "search_token", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("query_threads", "max_waiting", "url_max_redirects")
    @classmethod
    def _not_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must not be negative")
        return value

    @property
    def threads(self) -> int:
        """Queries that run at once (the query thread pool's size)."""
        return self.query_threads or os.cpu_count() or 1
