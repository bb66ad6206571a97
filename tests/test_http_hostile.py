"""The HTTP side as a hostile client meets it: a real exporter process on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import resource
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from aiohttp import web

from exporter.webconfig import BasicAuth, bcrypt_cost
from tests.process import ExporterProcess, exporter_process
from tests.support import Server, self_signed_cert

TRACEBACK = "Traceback (most recent call last)"


@pytest.fixture(scope="module")
def exporter(pg: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExporterProcess]:
    """Return one exporter serving /metrics and /probe?target=db, on the minimal profile."""
    directory = tmp_path_factory.mktemp("hostile")
    config = directory / "config.toml"
    config.write_text(f'profile = "minimal"\n[targets.db]\ndsn = "{pg.monitor()}"\n')
    with exporter_process(directory, dsn=pg.monitor(), args=["--config", str(config)]) as running:
        yield running


BAD_ACCEPT = [
    "text/plain;version=abc",
    "application/openmetrics-text; version=abc",
    "text/plain; version=1.x",
    "application/openmetrics-text; version=1.x",
    "application/openmetrics-text; version=",
    "application/openmetrics-text; version=1.0.0.0.0.0.0.x; q=abc",
    "text/plain; version=" + "9" * 5000,
    ";;;,,,=;version",
]


@pytest.mark.parametrize("path", ["/metrics", "/probe?target=db"])
@pytest.mark.parametrize("accept", BAD_ACCEPT, ids=[value[:40] for value in BAD_ACCEPT])
def test_a_version_that_is_not_a_number_gets_the_text_format(
    exporter: ExporterProcess, path: str, accept: str
) -> None:
    mark = len(exporter.log())
    status, headers, body = exporter.get(path, {"Accept": accept})
    assert status == 200, body[:500]
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"\npg_up 1\n" in body
    assert TRACEBACK not in exporter.log()[mark:]


def test_prometheus_accept_header_still_gets_openmetrics(exporter: ExporterProcess) -> None:
    accept = (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    status, headers, body = exporter.get("/metrics", {"Accept": accept})
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")


# ------------------------------------------------------------------------------ basic auth

PASSWORD = b"scrape-pw"
HASHED = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(rounds=5))


def basic(user: bytes, password: bytes) -> str:
    """Return an Authorization header for these credentials, as bytes on the wire."""
    return "Basic " + base64.b64encode(user + b":" + password).decode()


async def test_unknown_user_wrong_and_right_password_take_the_same_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checks: list[tuple[str, bytes]] = []
    checkpw = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        checks.append((threading.current_thread().name, hashed))
        return checkpw(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    auth = BasicAuth({"prometheus": HASHED.decode()})
    try:
        # An unknown user costs one check, against a dummy hash of the configured cost.
        assert not await auth.check(basic(b"nobody", PASSWORD))
        assert len(checks) == 1 and checks[0][1] != HASHED
        assert bcrypt_cost(checks[0][1].decode()) == bcrypt_cost(HASHED.decode())
        # A wrong password costs a check every time: failures are never remembered.
        assert not await auth.check(basic(b"prometheus", b"wrong"))
        assert not await auth.check(basic(b"prometheus", b"wrong"))
        assert len(checks) == 3
        # The right one costs one check, then is remembered.
        assert await auth.check(basic(b"prometheus", PASSWORD))
        assert await auth.check(basic(b"prometheus", PASSWORD))
        assert len(checks) == 4
        # Remembered for this user only.
        assert not await auth.check(basic(b"nobody", PASSWORD))
        assert len(checks) == 5
        # Every check ran on the bcrypt thread, never on the event loop.
        assert {name.split("_")[0] for name, _ in checks} == {"bcrypt"}
    finally:
        await auth.on_cleanup(web.Application())


@pytest.fixture(scope="module")
def auth_exporter(
    pg: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ExporterProcess]:
    """Return an exporter that asks for basic auth (user prometheus)."""
    directory = tmp_path_factory.mktemp("auth")
    web_config = directory / "web.yml"
    web_config.write_text(f"basic_auth_users:\n  prometheus: '{HASHED.decode()}'\n")
    args = ["--web.config.file", str(web_config)]
    with exporter_process(
        directory, dsn=pg.monitor(), args=args, env={"PG_EXPORTER_PROFILE": "minimal"}
    ) as running:
        yield running


REFUSED = {
    "no credentials": None,
    "wrong password": basic(b"prometheus", b"wrong"),
    "unknown user": basic(b"nobody", PASSWORD),
    "password over bcrypt's 72 bytes": basic(b"prometheus", PASSWORD + b"x" * 100),
    "user over 72 bytes": basic(b"p" * 200, PASSWORD),
    "bytes that are not UTF-8": basic(b"prom\xffetheus", b"\xfe\xff"),
    "NUL in the password": basic(b"prometheus", b"scrape\x00pw"),
    "no colon": "Basic " + base64.b64encode(b"prometheus").decode(),
    "not base64": "Basic !!!",
    "empty": "Basic ",
    "another scheme": "Bearer abc",
}


@pytest.mark.parametrize("header", REFUSED.values(), ids=REFUSED.keys())
def test_bad_credentials_get_401_never_500(
    auth_exporter: ExporterProcess, header: str | None
) -> None:
    mark = len(auth_exporter.log())
    status, headers, _ = auth_exporter.get(
        "/metrics", {"Authorization": header} if header is not None else {}
    )
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic")
    assert TRACEBACK not in auth_exporter.log()[mark:]


def test_the_right_password_scrapes(auth_exporter: ExporterProcess) -> None:
    for _ in range(3):
        status, _, body = auth_exporter.get(
            "/metrics", {"Authorization": basic(b"prometheus", PASSWORD)}
        )
        assert status == 200
        assert b"\npg_up 1\n" in body
    assert auth_exporter.get("/healthz")[0] == 200


# ---------------------------------------------------------------- what a client may hold

# Floods come from another loopback address than the scrapes, as an attacker would.
FLOOD_ADDRESS = "127.0.0.2"
# A request head that never ends: sent one byte a second, it would take over an hour.
SLOW_HEAD = b"GET /metrics HTTP/1.1\r\nHost: exporter\r\nX-Slow: " + b"a" * 4000


async def flood_connection(port: int) -> socket.socket | None:
    """Open a non-blocking connection from FLOOD_ADDRESS to the exporter; None when refused."""
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((FLOOD_ADDRESS, 0))
    try:
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), 5
        )
    except (OSError, TimeoutError):
        sock.close()
        return None
    return sock


async def slow_clients(port: int, count: int, seconds: float) -> int:
    """Keep `count` connections sending SLOW_HEAD a byte a second; reopen the ones closed.

    Return how many times a connection was found closed and reopened.
    """
    loop = asyncio.get_running_loop()
    clients: dict[socket.socket, int] = {}
    reopened = 0

    async def connect() -> None:
        sock = await flood_connection(port)
        if sock is not None:
            clients[sock] = 0

    deadline = loop.time() + seconds
    while loop.time() < deadline:
        await asyncio.gather(*(connect() for _ in range(count - len(clients))))
        for sock, sent in list(clients.items()):
            try:
                sock.send(SLOW_HEAD[sent : sent + 1])
                clients[sock] = sent + 1
            except OSError:
                sock.close()
                del clients[sock]
                reopened += 1
        await asyncio.sleep(1)
    for sock in clients:
        sock.close()
    return reopened


async def scrape_during(
    exporter: ExporterProcess, flood: asyncio.Task[int]
) -> tuple[list[tuple[int, bool]], list[int], int]:
    """Scrape every 0.5 s until the flood ends; return (status, pg_up 1) per scrape, the
    exporter's open files after each, and the flood's count of reopened connections."""
    scrapes: list[tuple[int, bool]] = []
    open_files: list[int] = []
    while not flood.done():
        status, _, body = await asyncio.to_thread(exporter.get, "/metrics", timeout=10)
        scrapes.append((status, b"\npg_up 1\n" in body))
        open_files.append(exporter.open_files())
        await asyncio.sleep(0.5)
    return scrapes, open_files, await flood


@pytest.fixture
def many_open_files() -> Iterator[None]:
    """Let this process open a few thousand sockets (a fresh machine's soft limit is 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if wanted < 2048:
        pytest.skip(f"the hard open-file limit ({hard}) is too low for 1,100 clients")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.slow
async def test_slow_clients_cannot_take_the_port(
    pg: Server, tmp_path: Path, many_open_files: None
) -> None:
    """1,100 slow clients against a 1,024 open-file limit: Prometheus's scrapes go on."""
    env = {"PG_EXPORTER_PROFILE": "minimal"}
    with exporter_process(tmp_path, dsn=pg.monitor(), env=env, open_files=1024) as exporter:
        flood = asyncio.create_task(slow_clients(exporter.port, 1100, seconds=12))
        scrapes, open_files, reopened = await scrape_during(exporter, flood)
        log = exporter.log()
        assert exporter.get("/metrics")[0] == 200
    assert reopened > 100  # the bound was hit: the exporter closed slow clients to make room
    assert len(scrapes) >= 5
    assert all(scrape == (200, True) for scrape in scrapes), scrapes
    assert max(open_files) < 1024
    assert TRACEBACK not in log
    assert "Too many open files" not in log
    assert log.count("HTTP connection limit reached (512 connections") == 1, log[-3000:]


def _wait_closed(sock: socket.socket, seconds: float) -> bool:
    """Tell whether the peer closes the connection within `seconds` (reading what it sends)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def test_a_head_sent_too_slowly_and_an_idle_connection_are_closed(
    pg: Server, tmp_path: Path
) -> None:
    env = {
        "PG_EXPORTER_PROFILE": "minimal",
        "PG_EXPORTER_HTTP_REQUEST_HEAD_TIMEOUT_SECONDS": "1",
        "PG_EXPORTER_HTTP_IDLE_TIMEOUT_SECONDS": "2",
    }
    with exporter_process(tmp_path, dsn=pg.monitor(), env=env) as exporter:
        silent = socket.create_connection(("127.0.0.1", exporter.port))
        slow = socket.create_connection(("127.0.0.1", exporter.port))
        slow.sendall(SLOW_HEAD[:20])
        kept_alive = socket.create_connection(("127.0.0.1", exporter.port))
        kept_alive.sendall(b"GET /healthz HTTP/1.1\r\nHost: exporter\r\n\r\n")
        assert kept_alive.recv(65536).startswith(b"HTTP/1.1 200")
        for sock in (silent, slow, kept_alive):
            with sock:
                assert _wait_closed(sock, 15)
        assert TRACEBACK not in exporter.log()


async def silent_clients(port: int, count: int, seconds: float) -> int:
    """Keep `count` TCP connections open that never send a byte (no TLS handshake either).

    Return how many times one was found closed and reopened.
    """
    loop = asyncio.get_running_loop()
    clients: set[socket.socket] = set()
    reopened = 0

    async def connect() -> None:
        sock = await flood_connection(port)
        if sock is not None:
            clients.add(sock)

    deadline = loop.time() + seconds
    while loop.time() < deadline:
        await asyncio.gather(*(connect() for _ in range(count - len(clients))))
        for sock in list(clients):
            try:
                closed = sock.recv(1) == b""
            except BlockingIOError:
                closed = False
            except OSError:
                closed = True
            if closed:
                sock.close()
                clients.discard(sock)
                reopened += 1
        await asyncio.sleep(0.5)
    for sock in clients:
        sock.close()
    return reopened


@pytest.mark.slow
async def test_clients_that_never_finish_a_tls_handshake_cannot_take_the_port(
    pg: Server, tmp_path: Path, many_open_files: None
) -> None:
    """With TLS, a connection counts from its accept, not from the end of its handshake.

    Under a 512 open-file limit the bound comes down to 88 (512 less what is kept back);
    1,100 clients that connect and never start a handshake must not exhaust the rest.
    """
    cert, key = self_signed_cert(tmp_path)
    web_config = tmp_path / "web.yml"
    web_config.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n")
    with exporter_process(
        tmp_path,
        dsn=pg.monitor(),
        args=["--web.config.file", str(web_config)],
        env={"PG_EXPORTER_PROFILE": "minimal"},
        open_files=512,
        tls_ca=cert,
    ) as exporter:
        flood = asyncio.create_task(silent_clients(exporter.port, 1100, seconds=12))
        scrapes, open_files, reopened = await scrape_during(exporter, flood)
        log = exporter.log()
    assert reopened > 100
    assert len(scrapes) >= 5
    assert all(scrape == (200, True) for scrape in scrapes), scrapes
    assert "http_max_connections 512 lowered to" in log
    assert max(open_files) < 512
    assert TRACEBACK not in log
    assert "Too many open files" not in log
