"""Every request counted and timed (`echoimage_http_*` metrics) and, when the access log
is JSON, logged as one JSON object per line on the ``echoimage.access`` logger:

    {"ts": "2026-12-06T08:01:02.345Z", "pid": 4121, "method": "POST",
     "path": "/api/search", "route": "/api/search", "status": 200, "ms": 212.4,
     "client": "127.0.0.1", "bytes": 1873, "search": {"found": false, "results": 5,
     "k": 5, "copies_only": false, "stages_ms": {"features_ms": 9.1, "shortlist_ms": 60.2, ...}}}

A pure ASGI middleware: it sees the status as the response starts and the time when it
ends; the route is the matched route's template (``/api/images/{image_id}``), so the
metrics' labels stay few.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("echoimage.access")


def route_of(scope: Scope) -> str:
    """The matched route's path template; "static" for static files, "unmatched" for
    anything no route took."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    if scope.get("path", "").startswith(("/static/", "/docs-assets/")):
        return "static"
    return "unmatched"


class Observe:
    """Count, time and (json_log) log each HTTP request of app (its metrics: the
    application's WebService's, once it has started)."""

    def __init__(self, app: ASGIApp, json_log: bool) -> None:
        self.app = app
        self.json_log = json_log
        self.pid = os.getpid()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})  # where a route notes a search's outcome
        t0 = time.perf_counter()
        status = 500  # when the application fails before it answers
        sent = 0

        async def observed(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            self._done(scope, status, time.perf_counter() - t0, sent)

    def _done(self, scope: Scope, status: int, seconds: float, sent: int) -> None:
        route = route_of(scope)
        method = scope.get("method", "")
        service = getattr(getattr(scope.get("app"), "state", None), "service", None)
        if service is not None and service.web.metrics:
            service.metrics.requests.labels(method, route, str(status)).inc()
            service.metrics.latency.labels(method, route).observe(seconds)
        if self.json_log and access_log.isEnabledFor(logging.INFO):
            client = scope.get("client")
            line: dict[str, Any] = {
                "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace(
                    "+00:00", "Z"),
                "pid": self.pid, "method": method, "path": scope.get("path", ""),
                "route": route, "status": status, "ms": round(seconds * 1000, 1),
                "client": client[0] if client else None, "bytes": sent,
            }
            search = (scope.get("state") or {}).get("search")
            if search is not None:
                line["search"] = search
            access_log.info("%s", json.dumps(line, separators=(",", ":")))
