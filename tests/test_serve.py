"""`echoimage serve` as an operator runs it: several real uvicorn processes on 127.0.0.1,
admission (503 with Retry-After once the queue is full), readiness, Prometheus metrics that
count what was asked, and the JSON access log.

Nothing here is timed: the admission test fills the queue of a server whose searches wait
at a gate (tests/support/gated_app.py) and asserts on the answers and the counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from conftest import Built
from fastapi import FastAPI
from helpers import free_port, jpeg, photo, resize, rotate, to_rgb

from echoimage.config import Settings
from echoimage.errors import SettingsError
from echoimage.web.app import (
    CONFIG_ENV,
    app_from_environment,
    create_app,
    run_processes,
    serve,
    tcp_listener,
)
from echoimage.web.config import WebSettings
from echoimage.web.metrics import MULTIPROC_ENV
from echoimage.web.service import Counters, NotReady, WebService

pytestmark = pytest.mark.usefixtures("no_network")

REPO = Path(__file__).resolve().parents[1]
SUPPORT = Path(__file__).resolve().parent / "support"
COPIES = ("coffee", "rocket", "camera", "astronaut", "chelsea", "moon")


def copy_of(name: str) -> bytes:
    """A smaller, slightly turned, re-compressed copy of a catalogue photo."""
    return jpeg(rotate(resize(to_rgb(photo(name)), 0.7), 3.0), 80)


_SAMPLE = re.compile(r'^(\w+)(?:\{([^}]*)\})? (\S+)$')


def metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples of a Prometheus text page, by (name, labels)."""
    out = {}
    for line in text.splitlines():
        if m := _SAMPLE.match(line):
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum of name's samples that carry labels."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@dataclass
class Server:
    """A server process on 127.0.0.1; its standard output (the access log) and error."""

    url: str
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    def get(self, path: str) -> httpx.Response:
        """GET on a connection of its own (which process answers is the kernel's pick)."""
        with httpx.Client(base_url=self.url, timeout=60) as client:
            return client.get(path)

    def samples(self) -> dict:
        resp = self.get("/metrics")
        assert resp.status_code == 200 and resp.headers["content-type"].startswith(
            "text/plain"), resp.text
        return metrics(resp.text)

    def wait_until(self, what: str, ok: object, seconds: float = 300.0) -> None:
        """Poll until ok() (a callable) is true; fail with what and the log after seconds."""
        deadline = time.monotonic() + seconds
        while not ok():  # type: ignore[operator]
            assert self.proc.poll() is None, f"server exited: {self.err.read_text()}"
            assert time.monotonic() < deadline, f"{what}: never\n{self.err.read_text()}"
            time.sleep(0.05)

    def stop(self) -> int:
        """Stop as Ctrl+C does; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return self.proc.returncode


def start(cmd: list[str], tmp_path: Path, env: dict[str, str]) -> Server:
    port = free_port()
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen([*cmd, "--port", str(port)], cwd=REPO, stdout=o, stderr=e,
                                env={**os.environ, **env})
    server = Server(f"http://127.0.0.1:{port}", proc, out, err)

    def listening() -> bool:
        try:
            return server.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    server.wait_until("the server answers /healthz", listening)
    return server


@pytest.fixture
def two_workers(built_copy: Built, tmp_path: Path) -> Iterator[Server]:
    """`echoimage serve --workers 2` over the built catalogue, both processes ready."""
    server = start([sys.executable, "-m", "echoimage", "--data-dir",
                    str(built_copy.settings.data_dir), "serve", "--workers", "2"], tmp_path,
                   {"ECHOIMAGE_ACCESS_LOG": "json"})
    try:
        server.wait_until("both processes ready", lambda: value(
            server.samples(), "echoimage_ready_processes") == 2)
        yield server
    finally:
        server.stop()


async def _search(client: httpx.AsyncClient, data: bytes) -> httpx.Response:
    return await client.post("/api/search", files={"file": ("q.jpg", data, "image/jpeg")})


def test_two_workers_answer_count_and_log_every_search(two_workers: Server) -> None:
    """Searches on many connections are all answered; /metrics (whichever process is
    scraped) counts every one of them by route, status and result; a query's results,
    answered by one process, are found by the other; each request is one JSON line."""
    server = two_workers
    before = server.samples()
    assert value(before, "echoimage_http_requests_total", route="/api/search") == 0

    async def load() -> list[httpx.Response]:
        limits = httpx.Limits(max_keepalive_connections=0)  # a new connection each time
        async with httpx.AsyncClient(base_url=server.url, timeout=120,
                                     limits=limits) as client:
            found = await asyncio.gather(*(_search(client, copy_of(n)) for n in COPIES))
            bad = await asyncio.gather(*(_search(client, b"not an image at all")
                                         for _ in range(2)))
            return [*found, *bad]

    resps = asyncio.run(load())
    assert [r.status_code for r in resps] == [200] * len(COPIES) + [415, 415]
    assert all(r.json()["found"] for r in resps[:len(COPIES)])
    tokens = [r.json()["query_token"] for r in resps[:len(COPIES)]]

    # the results of every query, asked for on fresh connections, from either process
    for token in tokens:
        for _ in range(3):
            assert server.get(f"/api/queries/{token}").status_code == 200
        top = server.get(f"/api/queries/{token}").json()["results"][0]["id"]
        png = server.get(f"/api/matches/{token}/{top}.png")
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")

    after = server.samples()
    n = len(COPIES)
    assert value(after, "echoimage_http_requests_total", route="/api/search", status="200") == n
    assert value(after, "echoimage_http_requests_total", route="/api/search", status="415") == 2
    assert value(after, "echoimage_searches_total", result="found", mode="full") == n
    assert value(after, "echoimage_searches_total", result="no_copy") == 0
    assert value(after, "echoimage_searches_total", mode="copies_only") == 0
    for stage in ("decode", "features", "shortlist", "rerank"):
        assert value(after, "echoimage_search_stage_seconds_count", stage=stage,
                     mode="full") == n
    assert value(after, "echoimage_http_request_duration_seconds_count",
                 route="/api/search") == n + 2
    assert value(after, "echoimage_query_cache_lookups_total") >= 4 * n
    assert value(after, "echoimage_query_cache_lookups_total", result="miss") == 0
    assert value(after, "echoimage_index_entries") == 12
    assert value(after, "echoimage_index_lag_changes") == 0
    assert value(after, "echoimage_index_change_number") == value(
        after, "echoimage_store_change_number") > 0
    assert value(after, "echoimage_queries_capacity") == 2 * (1 + 8)  # 2 x (thread + queue)

    assert server.stop() == 0
    lines = [json.loads(line) for line in server.out.read_text().splitlines()]
    searches = [line for line in lines if line["route"] == "/api/search"]
    assert sorted(line["status"] for line in searches) == [200] * n + [415, 415]
    assert len({line["pid"] for line in lines}) == 2  # both processes answered something
    for line in searches:
        assert line["method"] == "POST" and line["ms"] > 0
        if line["status"] == 200:
            assert line["search"]["found"] is True
            assert line["search"]["copies_only"] is False
            assert set(line["search"]["stages_ms"]) >= {"decode_ms", "rerank_ms"}
    assert "Traceback" not in server.err.read_text()


def test_workers_follow_the_store(two_workers: Server, built_copy: Built) -> None:
    """An image removed from the store leaves the index of every process (each refreshes
    its own), and /metrics says so: change numbers equal, no lag."""
    from echoimage.api import Catalogue

    with Catalogue(built_copy.settings) as catalogue:
        report = catalogue.remove(str(built_copy.catalogue.files["moon"]))
        assert len(report.removed) == 1
        seq = catalogue.change_number()
    server = two_workers
    server.wait_until("both processes at the store's change", lambda: (
        (s := server.samples()) and value(s, "echoimage_index_change_number") == seq
        and value(s, "echoimage_index_lag_changes") == 0))
    assert value(server.samples(), "echoimage_index_entries") == 11


def test_admission_refuses_at_once_when_the_queue_is_full(built_copy: Built,
                                                          tmp_path: Path) -> None:
    """Readiness and admission on a real uvicorn whose index load and searches wait at
    gates: before the load /healthz is 200 and /readyz and searches 503; with one thread
    busy and two searches waiting, further searches are refused with 503 and Retry-After
    (and counted) while the three taken are answered once the gate opens."""
    gates = tmp_path / "gates"
    gates.mkdir()
    server = start([sys.executable, "-m", "uvicorn", "gated_app:make", "--factory",
                    "--app-dir", str(SUPPORT), "--host", "127.0.0.1", "--no-access-log"],
                   tmp_path, {"ECHOIMAGE_TEST_GATES": str(gates),
                              "ECHOIMAGE_DATA_DIR": str(built_copy.settings.data_dir),
                              "ECHOIMAGE_QUERY_THREADS": "1", "ECHOIMAGE_MAX_WAITING": "2",
                              "ECHOIMAGE_RETRY_AFTER": "3"})
    try:
        # not ready: alive, but no searches
        ready = server.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "loading"
        assert ready.headers["retry-after"] == "3"
        assert server.get("/healthz").json() == {"status": "ok", "index_entries": None}
        with httpx.Client(base_url=server.url, timeout=60) as client:
            early = client.post("/api/search", files={"file": ("q.jpg", copy_of("coffee"))})
        assert early.status_code == 503 and early.headers["retry-after"] == "3"
        assert "not ready" in early.json()["detail"]
        assert early.headers["connection"] == "close"
        samples = server.samples()
        assert value(samples, "echoimage_ready_processes") == 0
        assert value(samples, "echoimage_search_refused_total", reason="loading") == 1
        (gates / "load").touch()
        server.wait_until("ready", lambda: server.get("/readyz").status_code == 200)
        assert server.get("/readyz").json() == {"status": "ready", "index_entries": 12}

        async def overload() -> tuple[list[httpx.Response], list[httpx.Response]]:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                taken = [asyncio.create_task(_search(client, copy_of(n)))
                         for n in COPIES[:3]]

                def full() -> bool:
                    s = server.samples()
                    return (value(s, "echoimage_queries_running") == 1
                            and value(s, "echoimage_queries_waiting") == 2)

                await asyncio.to_thread(server.wait_until, "one running, two waiting", full)
                refused = [await _search(client, copy_of(n)) for n in COPIES[3:]]
                (gates / "query").touch()
                return list(await asyncio.gather(*taken)), refused

        taken, refused = asyncio.run(overload())
        assert [r.status_code for r in taken] == [200, 200, 200]
        assert [r.status_code for r in refused] == [503] * 3
        for r in refused:
            assert r.headers["retry-after"] == "3" and "busy" in r.json()["detail"]
        samples = server.samples()
        assert value(samples, "echoimage_search_refused_total", reason="busy") == 3
        assert value(samples, "echoimage_http_requests_total", route="/api/search",
                     status="503") == 4
        assert value(samples, "echoimage_http_requests_total", route="/api/search",
                     status="200") == 3
        assert value(samples, "echoimage_queries_waiting") == 0
        assert value(samples, "echoimage_queries_running") == 0
    finally:
        (gates / "load").touch()
        (gates / "query").touch()
        server.stop()
    assert "Traceback" not in server.err.read_text()


# --- in process: health and readiness over HTTP, serve()'s set-up --------------------------

async def _ask(app: FastAPI, *paths: str) -> list[httpx.Response]:
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app),
                                     base_url="http://testserver") as client:
            service = app.state.service
            deadline = time.monotonic() + 60
            while not service.ready and service.load_error is None:  # a background load
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            return [await client.get(p) for p in paths]


def test_a_process_gone_while_the_load_folder_is_gone_is_forgotten(tmp_path: Path) -> None:
    """The folder of load files removed under the processes: those known are still told
    alive or gone by their locks (a dead one's last count is not kept)."""
    import shutil

    from echoimage.web.balance import Loads

    folder = tmp_path / "loads"
    me = Loads(folder, rescan=0)
    child = subprocess.Popen([sys.executable, "-c", _LOADS_CHILD, str(folder)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        child.stdin.write("3\n")
        child.stdin.flush()
        child.stdout.readline()
        assert me.least_other() == 3
        shutil.rmtree(folder)
        assert me.least_other() == 3  # alive: its lock is held
    finally:
        child.kill()
        child.wait()
    assert me.least_other() is None
    me.close()


def test_a_server_that_cannot_start_leaves_nothing_open(tmp_path: Path, monkeypatch) -> None:
    """A process that cannot start, its index not loading (loading before it serves) or
    anything failing before, says why and leaves nothing behind: its load file in the
    shared folder is gone (the others would count it), its threads stopped (closed)."""
    from echoimage.fetch.ssrf import GuardedFetcher

    shared = tmp_path / "shared"
    web = WebSettings(shared_dir=shared, load_in_background=False)
    closed: list[WebService] = []
    close = WebService.close

    async def spy(self: WebService) -> None:
        closed.append(self)
        await close(self)

    monkeypatch.setattr(WebService, "close", spy)
    with pytest.raises(NotReady, match="no catalogue"):
        asyncio.run(WebService.start(Settings(data_dir=tmp_path / "nothing"), web))
    assert list((shared / "loads").iterdir()) == [] and len(closed) == 1

    async def fails(self: GuardedFetcher) -> GuardedFetcher:
        raise OSError("no sockets left")

    monkeypatch.setattr(GuardedFetcher, "__aenter__", fails)
    with pytest.raises(OSError, match="no sockets left"):
        asyncio.run(WebService.start(Settings(data_dir=tmp_path / "nothing"), web))
    assert list((shared / "loads").iterdir()) == [] and len(closed) == 2


def test_healthz_and_readyz_over_http(built: Built, tmp_path: Path) -> None:
    """A loaded server is alive and ready; one whose catalogue is missing is alive, not
    ready (with the reason), and refuses searches with 503 and Retry-After."""
    app = create_app(built.settings, WebSettings())
    health, ready, stats = asyncio.run(_ask(app, "/healthz", "/readyz", "/api/stats"))
    assert health.status_code == 200 and health.json() == {"status": "ok",
                                                           "index_entries": 12}
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert stats.json()["server"]["max_waiting"] == 8

    missing = create_app(Settings(data_dir=tmp_path / "nothing"),
                         WebSettings(load_in_background=True))
    health, ready, stats = asyncio.run(_ask(missing, "/healthz", "/readyz", "/api/stats"))
    assert health.status_code == 200 and health.json()["index_entries"] is None
    assert ready.status_code == 503 and ready.json()["status"] == "failed"
    assert "no catalogue" in ready.json()["detail"] and ready.headers["retry-after"] == "1"
    assert stats.status_code == 503 and "not ready" in stats.json()["detail"]


@pytest.fixture
def fake_uvicorn(monkeypatch: pytest.MonkeyPatch) -> dict:
    seen: dict = {}

    def run(app: object, **kw: object) -> None:
        seen.update(kw, app=app, env={k: os.environ.get(k) for k in (CONFIG_ENV,
                                                                      MULTIPROC_ENV)})
        if kw.get("factory"):  # what each worker process does
            seen["worker_app"] = app_from_environment()

    monkeypatch.setattr("echoimage.web.app.uvicorn.run", run)
    monkeypatch.setattr("echoimage.web.app.run_processes", run)
    return seen


def test_serve_one_process_runs_the_app(built: Built, fake_uvicorn: dict) -> None:
    serve(built.settings, "127.0.0.1", free_port(), WebSettings(serve_workers=1))
    assert isinstance(fake_uvicorn["app"], FastAPI) and "workers" not in fake_uvicorn


def test_serve_workers_get_the_settings(built: Built, fake_uvicorn: dict,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """With several workers uvicorn gets the factory; each worker rebuilds the same
    Settings and WebSettings (tokens too) from the environment, with a private shared
    directory for metrics, queries and jobs, removed when the server stops."""
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    settings = built.settings.model_copy(update={"max_k": 7})
    serve(settings, "127.0.0.1", free_port(),
          WebSettings(serve_workers=3, max_waiting=5, api_token="t0ken"))
    assert fake_uvicorn["workers"] == 3 and fake_uvicorn["factory"] is True
    assert fake_uvicorn["app"] == "echoimage.web.app:app_from_environment"
    config = json.loads(fake_uvicorn["env"][CONFIG_ENV])
    assert Settings.model_validate(config["settings"]) == settings
    web = WebSettings.model_validate(config["web"])
    assert (web.serve_workers, web.max_waiting, web.threads) == (3, 5, 1)
    assert web.api_token is not None and web.api_token.get_secret_value() == "t0ken"
    assert web.load_in_background and web.shared_dir is not None
    assert Path(fake_uvicorn["env"][MULTIPROC_ENV]).parent == web.shared_dir.parent
    assert isinstance(fake_uvicorn["worker_app"], FastAPI)
    # the server stopped: the environment is as it was, the shared directory gone
    assert os.environ.get(CONFIG_ENV) is None and os.environ.get(MULTIPROC_ENV) is None
    assert not web.shared_dir.parent.exists()


def test_metrics_scrape_while_a_process_starts(tmp_path: Path) -> None:
    """A scrape that finds the metrics file of a process still starting (created, not yet
    sized) reports the others' metrics instead of failing."""
    script = (
        "import os, sys\n"
        f"os.environ[{MULTIPROC_ENV!r}] = sys.argv[1]\n"
        "from echoimage.web.metrics import Metrics\n"
        "m = Metrics()\n"
        "m.observe_search(True, {}, False)\n"
        "open(os.path.join(sys.argv[1], 'gauge_livesum_999999.db'), 'wb').close()\n"
        "sys.stdout.write(m.render().decode())\n")
    shared = tmp_path / "metrics"
    shared.mkdir()
    out = subprocess.run([sys.executable, "-c", script, str(shared)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'echoimage_searches_total{mode="full",result="found"} 1.0' in out.stdout


def test_serve_on_a_port_in_use_says_so_in_one_line(built: Built) -> None:
    """A second server on a port another listens on is a SettingsError naming the port,
    before any process starts (uvicorn said only its errno)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for workers in (1, 2):
            with pytest.raises(SettingsError) as err:
                serve(built.settings, port=port, web=WebSettings(serve_workers=workers))
            assert str(err.value) == (f"cannot listen on 127.0.0.1:{port}: the address is "
                                      "in use (another server is on it: --port picks another)")


def test_metrics_forget_a_killed_process(tmp_path: Path) -> None:
    """A serving process killed with kill -9 never says it is gone: its live gauges (ready,
    capacity, change number) leave the next scrape; its counters stay."""
    shared = tmp_path / "metrics"
    shared.mkdir()
    env = {**os.environ, MULTIPROC_ENV: str(shared)}
    serving = ("from echoimage.web.metrics import Metrics\n"
               "m = Metrics()\n"
               "m.ready.set(1); m.capacity.set(9); m.observe_search(True, {}, False)\n")
    killed = subprocess.Popen([sys.executable, "-c", serving + "print('up', flush=True)\n"
                               "import time; time.sleep(60)\n"], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert killed.stdout is not None and killed.stdout.readline().strip() == "up"
    finally:
        killed.kill()
        killed.wait(30)
    out = subprocess.run([sys.executable, "-c", serving + "import sys\n"
                          "sys.stdout.write(m.render().decode())\n"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "echoimage_ready_processes 1.0" in out.stdout, out.stdout
    assert "echoimage_queries_capacity 9.0" in out.stdout
    assert 'echoimage_searches_total{mode="full",result="found"} 2.0' in out.stdout


def _accepted_nodelay(listener: socket.socket) -> int:
    """TCP_NODELAY of a connection accepted by an asyncio server on listener (as uvicorn's
    worker processes serve the socket they are given)."""
    found: list[int] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            found.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
        for _ in range(200):
            if found:
                break
            await asyncio.sleep(0.01)
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    return found[0]


def test_a_shared_listener_is_made_one_whose_connections_send_at_once() -> None:
    """uvicorn binds the socket of several worker processes without its protocol number
    (uvicorn issue #3149), and asyncio leaves Nagle's algorithm on for what it accepts:
    each answer on a kept-alive connection then waits ~40 ms for the client's delayed
    ACK. tcp_listener makes it a TCP socket; its connections get TCP_NODELAY."""
    raw = socket.socket(family=socket.AF_INET)  # as uvicorn's Config.bind_socket makes it
    raw.bind(("127.0.0.1", 0))
    raw.listen()
    fixed = tcp_listener(raw)
    assert fixed.proto == socket.IPPROTO_TCP and fixed.getsockname()[0] == "127.0.0.1"
    assert _accepted_nodelay(fixed) == 1
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # not TCP: as it is
    assert tcp_listener(unix) is unix
    unix.close()


def test_run_processes_hands_uvicorns_supervisor_a_tcp_listener(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}

    class Supervisor:
        def __init__(self, config: object, sockets: list[socket.socket]) -> None:
            seen.update(config=config, sockets=sockets)

        def run(self) -> None:
            sock = seen["sockets"][0]
            seen["proto"], seen["port"] = sock.proto, sock.getsockname()[1]
            seen["nodelay"] = _accepted_nodelay(sock.dup())  # (the probe closes its own)

    monkeypatch.setattr("echoimage.web.app.Multiprocess", Supervisor)
    port = free_port()
    run_processes("echoimage.web.app:app_from_environment", factory=True, workers=2,
                  host="127.0.0.1", port=port, log_config=None)
    assert seen["config"].workers == 2 and seen["port"] == port
    assert seen["proto"] == socket.IPPROTO_TCP and seen["nodelay"] == 1
    assert seen["sockets"][0].fileno() == -1  # closed when the supervisor returns


def test_a_busy_process_of_several_closes_an_answered_connection() -> None:
    """With several serving processes, a search answered while others wait in this
    process, when another process holds fewer searches, closes its connection, so that
    the client's next one may go to that process; alone, with nobody waiting, or with
    every other process as busy, a process keeps it."""
    def sheds(least: int | None, running: int, waiting: int, several: bool = True) -> bool:
        loads = SimpleNamespace(least_other=lambda: least) if several else None
        return WebService.sheds(SimpleNamespace(
            loads=loads, counters=Counters(running=running, waiting=waiting)))

    assert sheds(0, 1, 2) and sheds(5, 1, 8)
    assert not sheds(0, 1, 0)  # nobody waits here
    assert not sheds(3, 1, 2) and not sheds(7, 1, 6)  # the others are as busy
    assert not sheds(None, 1, 3)  # no other process (yet)
    assert not sheds(0, 1, 3, several=False)  # one process


_LOADS_CHILD = """
import sys
from pathlib import Path
from echoimage.web.balance import Loads
loads = Loads(Path(sys.argv[1]), rescan=0)
print("ready", flush=True)
for line in sys.stdin:
    loads.publish(None if line.strip() == "none" else int(line))
    print(loads.least_other(), flush=True)
"""


def test_processes_read_each_others_searches(tmp_path: Path) -> None:
    """Each process publishes its searches in a file of its own; another reads the fewest
    any live process holds, and forgets (and removes) a process that is gone: killed, or
    whose pid another process has taken since."""
    from echoimage.web.balance import Loads

    folder = tmp_path / "loads"
    me = Loads(folder, rescan=0)
    assert me.least_other() is None
    others = [subprocess.Popen([sys.executable, "-c", _LOADS_CHILD, str(folder)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
              for _ in range(2)]
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    def tell(proc: subprocess.Popen[str], queries: int | None) -> str:
        """Have another process publish; what it reads of the others."""
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"{'none' if queries is None else queries}\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    try:
        for proc in others:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert me.least_other() is None  # they take no searches yet (their index loading)
        me.publish(9)
        assert tell(others[0], 3) == "9" and me.least_other() == 3
        assert tell(others[1], 5) == "3" and me.least_other() == 3
        assert tell(others[0], 0) == "5" and me.least_other() == 0
        assert tell(others[0], None) == "5" and me.least_other() == 5
        # a file left by a process that died, whose pid another process has now: no lock
        taken = folder / str(stranger.pid)
        taken.write_bytes((1).to_bytes(8, "little", signed=True))
        assert me.least_other() == 5 and not taken.exists()
        assert tell(others[0], 2) == "5" and me.least_other() == 2
        others[0].kill()  # kill -9: its lock goes with it
        others[0].wait()
        assert me.least_other() == 5
        assert not (folder / str(others[0].pid)).exists()
    finally:
        for proc in (*others, stranger):
            proc.kill()
            proc.wait()
    assert me.least_other() is None  # gone: forgotten, their files removed
    assert sorted(p.name for p in folder.iterdir()) == [str(os.getpid())]
    me.close()
    assert not any(folder.iterdir())
    me.publish(4)  # closed: says nothing, reads nothing
    assert me.least_other() is None
