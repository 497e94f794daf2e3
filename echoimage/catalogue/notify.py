"""Webhooks: each new finding of a scan POSTed as JSON to a URL, signed, with retries.

The body is the finding's JSON (`FindingInfo.to_dict()`, with ``"event": "finding"``); the
``X-EchoImage-Signature-256`` header is ``sha256=`` and the hex HMAC-SHA256 of the body
under the configured secret (`Settings.webhook_secret`), so the receiver can check that the
body came from this EchoImage and was not changed (compare in constant time). A network
error, a timeout, a 429 or a 5xx is tried again (`webhook_retries` times, with full-jitter
backoff); any other answer than 2xx is a failure at once. ``X-EchoImage-Delivery`` is the
finding's id: a receiver that gets a finding twice (a delivery retried after its answer was
lost) can tell.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
from dataclasses import dataclass
from typing import Any

import aiohttp

from echoimage.fetch.client import is_retryable_http
from echoimage.fetch.ssrf import UrlPolicy

#: the header that carries the body's signature
SIGNATURE_HEADER = "X-EchoImage-Signature-256"

#: why a webhook cannot be used (or saved with a watch) without a secret
NO_SECRET = "a webhook needs a secret to sign its deliveries: set ECHOIMAGE_WEBHOOK_SECRET"


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for body: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """True when header is body's signature under secret (for receivers and tests)."""
    return hmac.compare_digest(sign(secret, body), header.strip())


@dataclass(frozen=True)
class Delivery:
    """How one delivery went: ok, the last HTTP status, tries, and why it failed."""

    ok: bool
    attempts: int
    http_status: int | None = None
    reason: str | None = None


class Webhook:
    """Delivers payloads to one URL through one aiohttp session (an async context
    manager)."""

    def __init__(self, url: str, secret: str, user_agent: str, retries: int, timeout: float,
                 policy: UrlPolicy | None = None, backoff: float = 0.5) -> None:
        self.url = url
        self.secret = secret
        self.user_agent = user_agent
        self.retries = retries
        self.timeout = timeout
        self.policy = policy
        self.backoff = backoff
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Webhook:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout), trust_env=False,
            headers={"User-Agent": self.user_agent})
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def deliver(self, payload: dict[str, Any], delivery_id: str) -> Delivery:
        """POST payload (JSON), tried again on transient failures; never raises for a
        failure of the receiver."""
        assert self._session is not None, "use 'async with Webhook(...)'"
        if self.policy is not None and (refusal := await self.policy.check(self.url)):
            return Delivery(False, 0, reason=f"refused {self.url}: {refusal}")
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", "X-EchoImage-Event": "finding",
                   "X-EchoImage-Delivery": delivery_id,
                   SIGNATURE_HEADER: sign(self.secret, body)}
        status: int | None = None
        reason = ""
        attempt = 0
        for attempt in range(1, self.retries + 2):
            try:
                async with self._session.post(self.url, data=body, headers=headers,
                                              allow_redirects=False) as resp:
                    status = resp.status
                    if 200 <= status < 300:
                        return Delivery(True, attempt, status)
                    reason = f"HTTP {status} {resp.reason or ''}".strip()
                    if not is_retryable_http(status):
                        break
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                status, reason = None, f"{type(exc).__name__}: {exc}".strip().rstrip(":")
            if attempt <= self.retries:
                await asyncio.sleep(random.uniform(0, self.backoff * 2 ** (attempt - 1)))
        return Delivery(False, attempt, status, f"{reason} (after {attempt} attempts)"
                        if attempt > 1 else reason)
