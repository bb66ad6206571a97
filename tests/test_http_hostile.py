"""The HTTP side as a hostile client meets it: a real exporter process on a real PostgreSQL."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator

import bcrypt
import pytest
from aiohttp import web

from exporter.webconfig import BasicAuth, bcrypt_cost
from tests.process import ExporterProcess, exporter_process
from tests.support import Server

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
