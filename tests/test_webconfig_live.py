"""The web config as exporter-toolkit reads it, on the real exporter with real TLS clients.

A rotated certificate or a changed user list applies without a restart, a broken new version
leaves the last good one serving (one warning), `client_allowed_sans` refuses clients whose
certificate names none of the allowed values, inline `cert`/`key`/`client_ca` serve, and
`rate_limit` answers 429. Certificates are made with openssl; clients are Python's ssl and
`openssl s_client`.
"""

from __future__ import annotations

import base64
import http.client
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from exporter import webconfig
from exporter.webconfig import LiveWebConfig
from tests.process import serve_on_a_free_port
from tests.support import REPOSITORY, Scrape, TestCA, free_port, require_tool

# Nothing listens there: these tests are about the HTTP side, not the database.
DSN = f"host=127.0.0.1 port={free_port()} user=nobody connect_timeout=1"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """A CA; server certificates A and B for 127.0.0.1; clients allowed, other and by IP."""
    authority = TestCA(tmp_path_factory.mktemp("pki"))
    authority.issue("server-a", sans="IP:127.0.0.1", serial=0xA1)
    authority.issue("server-b", sans="IP:127.0.0.1", serial=0xB2)
    authority.issue("allowed", sans="DNS:prometheus.example", client=True)
    authority.issue("other", sans="DNS:intruder.example,email:x@example.org", client=True)
    authority.issue("by-ip", sans="IP:10.0.0.7,URI:spiffe://example/p", client=True)
    return authority


def replace(path: Path, data: bytes) -> None:
    """Replace a file at once, as cert-manager, kubelet and editors do (a new inode)."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_bytes(data)
    os.replace(fresh, path)


@contextmanager
def exporter(directory: Path, web_config: Path, *args: str) -> Iterator[tuple[int, Path]]:
    """Run the exporter's command line with this web config; yield its port and log file."""

    def log_of(port: int) -> Path:
        return directory / f"exporter-{port}.log"

    def start(port: int) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "exporter", "--web.listen-address", f"127.0.0.1:{port}",
                   "--web.config.file", str(web_config), *args]  # fmt: skip
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp",
               "PYTHONPATH": str(REPOSITORY), "DATA_SOURCE_NAME": DSN,
               "PG_EXPORTER_PROFILE": "minimal"}  # fmt: skip
        with log_of(port).open("wb") as log:
            return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)

    process, port = serve_on_a_free_port(start, log_of)
    try:
        yield port, log_of(port)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def client_context(ca: TestCA, cert: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.cert))
    if cert is not None:
        context.load_cert_chain(ca.directory / f"{cert}.crt", ca.directory / f"{cert}.key")
    return context


def served_certificate(port: int, ca: TestCA) -> tuple[str, str]:
    """Connect anew; return the (CN, serial) of the certificate the server presents."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        client_context(ca).wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        cert: dict[str, Any] = tls.getpeercert() or {}
    subject = {name: value for ((name, value),) in cert["subject"]}
    return str(subject["commonName"]), str(cert["serialNumber"])


def request(
    port: int,
    path: str = "/",
    *,
    context: ssl.SSLContext | None = None,
    headers: Mapping[str, str] | None = None,
    method: str = "GET",
) -> tuple[int, dict[str, str]]:
    """Send one request on a fresh connection; return status and headers."""
    conn = (
        http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
        if context is not None
        else http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    )
    try:
        conn.request(method, path, headers=dict(headers or {}))
        response = conn.getresponse()
        response.read()
        return response.status, dict(response.getheaders())
    finally:
        conn.close()


def web_config_loaded(port: int, headers: Mapping[str, str]) -> float:
    """Return pg_exporter_web_config_last_reload_successful from /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics", headers=dict(headers))
        page = conn.getresponse().read().decode()
    finally:
        conn.close()
    return Scrape(page).value("pg_exporter_web_config_last_reload_successful")


def refused(port: int, context: ssl.SSLContext) -> bool:
    """Tell whether a TLS client is refused: the handshake fails or the connection closes."""
    try:
        status, _ = request(port, "/healthz", context=context)
    except (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected):
        return True
    return status != 200


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def bcrypt_hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def warnings(log: Path, text: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if text in line]


def test_a_rotated_certificate_is_served_without_a_restart(ca: TestCA, tmp_path: Path) -> None:
    pki = ca.directory
    (tmp_path / "tls.crt").write_bytes((pki / "server-a.crt").read_bytes())
    (tmp_path / "tls.key").write_bytes((pki / "server-a.key").read_bytes())
    web = tmp_path / "web.yml"
    # Relative names: from the web config's directory, as exporter-toolkit takes them.
    web.write_text("tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n")
    with exporter(tmp_path, web) as (port, log):
        assert served_certificate(port, ca) == ("server-a", "A1")
        # cert-manager writes the new pair: the next new connection gets it.
        replace(tmp_path / "tls.key", (pki / "server-b.key").read_bytes())
        replace(tmp_path / "tls.crt", (pki / "server-b.crt").read_bytes())
        assert served_certificate(port, ca) == ("server-b", "B2")
        # A real client of another make agrees.
        s_client = subprocess.run(
            [require_tool("openssl"), "s_client", "-connect", f"127.0.0.1:{port}",
             "-CAfile", str(ca.cert), "-verify_return_error"],
            input=b"", capture_output=True, timeout=30,
        )  # fmt: skip
        out = s_client.stdout.decode()
        assert "CN = server-b" in out or "CN=server-b" in out, out
        assert "Verify return code: 0 (ok)" in out
        # A broken certificate: the last good one goes on serving, one warning says why.
        replace(tmp_path / "tls.crt", b"-----BEGIN CERTIFICATE-----\nbroken\n")
        for _ in range(3):
            assert served_certificate(port, ca) == ("server-b", "B2")
        problems = warnings(log, "still serving the previous web config")
        assert len(problems) == 1, problems
        assert "tls_server_config.cert_file" in problems[0] and str(web) in problems[0]
        # A broken web config file likewise; then a good one is taken again.
        replace(web, web.read_bytes() + b"  min_version: SSL2\n")
        assert served_certificate(port, ca) == ("server-b", "B2")
        assert "min_version" in warnings(log, "still serving the previous web config")[-1]
        replace(tmp_path / "tls.crt", (pki / "server-a.crt").read_bytes())
        replace(tmp_path / "tls.key", (pki / "server-a.key").read_bytes())
        replace(web, b"tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n")
        assert served_certificate(port, ca) == ("server-a", "A1")
        text = log.read_text()
    assert len(warnings(log, "still serving the previous web config")) == 2
    assert "Traceback" not in text
    assert "PRIVATE KEY" not in text


def test_changed_users_and_headers_apply_to_the_next_request(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prometheus: '{bcrypt_hash('first-pw')}'\n")
    with exporter(tmp_path, web) as (port, log):
        assert request(port, headers=basic("prometheus", "first-pw"))[0] == 200
        assert request(port)[0] == 401
        new_hash = bcrypt_hash("second-pw")
        replace(
            web,
            f"basic_auth_users:\n  prometheus: '{new_hash}'\n"
            "http_server_config:\n  headers:\n    X-Frame-Options: deny\n".encode(),
        )
        # The old password was remembered as good: it must not be any more.
        assert request(port, headers=basic("prometheus", "first-pw"))[0] == 401
        assert web_config_loaded(port, basic("prometheus", "second-pw")) == 1
        status, headers = request(port, headers=basic("prometheus", "second-pw"))
        assert status == 200 and headers["X-Frame-Options"] == "deny"
        # A broken user list leaves the last good one in force, with one warning.
        replace(web, b"basic_auth_users:\n  prometheus: plaintext-not-a-hash\n")
        assert request(port, headers=basic("prometheus", "second-pw"))[0] == 200
        assert request(port, headers=basic("prometheus", "plaintext-not-a-hash"))[0] == 401
        problems = warnings(log, "still serving the previous web config")
        assert len(problems) == 1 and "basic_auth_users" in problems[0], problems
        # A reload (SIGHUP, POST /-/reload) checks the web config too, and says it is broken.
        credentials = basic("prometheus", "second-pw")
        assert web_config_loaded(port, credentials) == 0
        assert request(port, "/-/reload", headers=credentials, method="POST")[0] == 500
        assert "basic_auth_users" in warnings(log, "reload failed")[-1]
        # No users at all: no credentials asked for.
        replace(web, b"basic_auth_users: {}\n")
        assert request(port)[0] == 200
        text = log.read_text()
    assert new_hash not in text and "second-pw" not in text and "plaintext-not" not in text


def test_client_allowed_sans(ca: TestCA, tmp_path: Path) -> None:
    pki = ca.directory
    web = tmp_path / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {pki / 'server-a.crt'}\n"
        f"  key_file: {pki / 'server-a.key'}\n  client_ca_file: {ca.cert}\n"
        "  client_auth_type: RequireAndVerifyClientCert\n"
        "  client_allowed_sans: [prometheus.example, 10.0.0.7]\n"
    )
    with exporter(tmp_path, web) as (port, log):
        assert request(port, "/healthz", context=client_context(ca, "allowed"))[0] == 200
        assert request(port, "/healthz", context=client_context(ca, "by-ip"))[0] == 200
        # Signed by the same CA, but named otherwise: refused before any request.
        assert refused(port, client_context(ca, "other"))
        assert refused(port, client_context(ca))
        assert request(port, "/healthz", context=client_context(ca, "allowed"))[0] == 200
        refusals = warnings(log, "names none of client_allowed_sans")
    assert len(refusals) == 1, refusals


def test_client_allowed_sans_when_a_certificate_is_optional(ca: TestCA, tmp_path: Path) -> None:
    pki = ca.directory
    web = tmp_path / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {pki / 'server-a.crt'}\n"
        f"  key_file: {pki / 'server-a.key'}\n  client_ca_file: {ca.cert}\n"
        "  client_auth_type: VerifyClientCertIfGiven\n"
        "  client_allowed_sans: ['spiffe://example/p']\n"
    )
    with exporter(tmp_path, web) as (port, _):
        assert request(port, "/healthz", context=client_context(ca, "by-ip"))[0] == 200
        assert refused(port, client_context(ca, "allowed"))
        # exporter-toolkit cannot match a certificate that is not there, and refuses too.
        assert refused(port, client_context(ca))


def test_inline_cert_key_and_client_ca(ca: TestCA, tmp_path: Path) -> None:
    pki = ca.directory

    def block(path: Path) -> str:
        return "|\n" + "".join(f"    {line}\n" for line in path.read_text().splitlines())

    web = tmp_path / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert: {block(pki / 'server-b.crt')}"
        f"  key: {block(pki / 'server-b.key')}  client_ca: {block(ca.cert)}"
        "  client_auth_type: RequireAndVerifyClientCert\n"
    )
    web.chmod(0o600)
    with exporter(tmp_path, web) as (port, log):
        assert request(port, "/healthz", context=client_context(ca, "allowed"))[0] == 200
        assert refused(port, client_context(ca))
        text = log.read_text()
    key_line = (pki / "server-b.key").read_text().splitlines()[1]
    assert key_line not in text and "PRIVATE KEY" not in text


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        ("  cert: {cert}  cert_file: {crt}\n  key_file: {key}\n", "cert and cert_file both"),
        ("  key: {secret}  key_file: {key}\n  cert_file: {crt}\n", "key and key_file both"),
        ("  cert_file: {crt}\n", "missing one of key or key_file"),
        ("  cert_file: {crt}\n  key: {secret}", "tls_server_config.cert_file, key:"),
        ("  cert_file: {crt}\n  key_file: {crt}\n", "tls_server_config.key_file: no PEM private"),
        (
            "  cert_file: {crt}\n  key_file: {key}\n  client_auth_type: VerifyClientCertIfGiven\n"
            "  client_ca_file: {key}\n",
            "tls_server_config.client_ca_file: no certificate",
        ),
        (
            "  cert_file: {crt}\n  key_file: {key}\n  client_allowed_sans: [x]\n",
            "client_allowed_sans needs client_auth_type",
        ),
        (
            "  cert_file: {crt}\n  key_file: {key}\n  client_ca_file: {crt}\n",
            "client CA is given without",
        ),
        (
            "  cert_file: {crt}\n  key_file: {key}\n  client_auth_type: RequireClientCert\n",
            "RequireClientCert",
        ),
        (
            "  cert_file: {crt}\n  key_file: {key}\n  client_auth_type: VerifyClientCertIfGiven"
            "\n  client_ca: |\n    not a certificate\n",
            "tls_server_config.client_ca:",
        ),
        ('  cert_file: "c\\0.pem"\n  key_file: {key}\n', "cert_file: a NUL character"),
        (
            "  cert_file: {crt}\n  key_file: {key}\n  client_auth_type: VerifyClientCertIfGiven"
            "\n  client_ca_file: /dev/zero\n",
            "tls_server_config.client_ca_file: /dev/zero: not a regular file",
        ),
        ("  cert_file: {crt}\n  key_file: {encrypted}\n", "an encrypted private key"),
    ],
)
def test_inline_mistakes_are_one_line_without_the_key(
    ca: TestCA, tmp_path: Path, tls: str, expected: str
) -> None:
    pki = ca.directory
    secret = (
        "|\n    -----BEGIN PRIVATE KEY-----\n    S3CRETKEYMATERIAL\n    -----END PRIVATE KEY-----\n"
    )
    cert = "|\n" + "".join(
        f"    {line}\n" for line in (pki / "server-a.crt").read_text().splitlines()
    )
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        ["openssl", "pkey", "-in", str(pki / "server-a.key"), "-aes128", "-passout", "pass:x",
         "-out", str(encrypted)],
        check=True, capture_output=True,
    )  # fmt: skip
    web = tmp_path / "web.yml"
    web.write_text(
        "tls_server_config:\n"
        + tls.format(
            cert=cert,
            crt=pki / "server-a.crt",
            key=pki / "server-a.key",
            secret=secret,
            encrypted=encrypted,
        )
    )
    run = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", "--web.config.file", str(web)],
        capture_output=True, text=True, timeout=60, cwd=REPOSITORY, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY), "DATA_SOURCE_NAME": DSN},
    )  # fmt: skip
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and str(web) in lines[0], lines
    assert "S3CRETKEYMATERIAL" not in run.stdout + run.stderr


def test_rate_limit(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("rate_limit:\n  interval: 1h\n  burst: 2\n")
    with exporter(tmp_path, web) as (port, _):
        assert [request(port)[0] for _ in range(3)] == [200, 200, 429]
        assert request(port, "/healthz")[0] == 200  # a liveness probe is never limited


# ---------------------------------------------------------------- LiveWebConfig in-process


def test_a_rewrite_that_leaves_the_metadata_as_it_was_is_seen_by_its_contents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prometheus: '{bcrypt_hash('one')}'\n")
    live = LiveWebConfig.load(web)
    # As if the file system kept the same size, inode and times (coarse timestamps).
    monkeypatch.setattr(webconfig, "_stamps", lambda paths: (None,) * len(paths))
    monkeypatch.setattr(webconfig, "CONTENT_CHECK_SECONDS", 0.0)
    live.refresh()
    first = live.config
    web.write_text(f"basic_auth_users:\n  prometheus: '{bcrypt_hash('two')}'\n")
    assert live.refresh() is not first
    assert live.refresh() is live.config  # and then quiet


def test_a_certificate_named_before_it_is_written_is_taken_once_written(
    ca: TestCA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = ca.directory
    web = tmp_path / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {pki / 'server-a.crt'}\n"
        f"  key_file: {pki / 'server-a.key'}\n"
    )
    live = LiveWebConfig.load(web)
    old = live.server_tls()
    replace(web, b"tls_server_config:\n  cert_file: new.crt\n  key_file: new.key\n")
    with caplog.at_level(logging.INFO, logger="exporter.webconfig"):
        for _ in range(3):
            assert live.server_tls() is old
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert "tls_server_config.cert_file" in caplog.records[0].getMessage()
        (tmp_path / "new.key").write_bytes((pki / "server-b.key").read_bytes())
        (tmp_path / "new.crt").write_bytes((pki / "server-b.crt").read_bytes())
        assert live.server_tls() is not old
        assert caplog.records[-1].levelname == "INFO"


def test_tls_is_turned_on_or_off_by_a_restart_only(
    ca: TestCA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users: {}\n")
    live = LiveWebConfig.load(web)
    pki = ca.directory
    replace(
        web,
        f"tls_server_config:\n  cert_file: {pki / 'server-a.crt'}\n"
        f"  key_file: {pki / 'server-a.key'}\n".encode(),
    )
    with caplog.at_level(logging.WARNING, logger="exporter.webconfig"):
        assert live.refresh().tls_server_config is None and not live.tls
    assert "by a restart only" in caplog.text


def test_a_ca_file_with_words_around_its_certificates_loads(ca: TestCA, tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("Zertifizierungsstelle für Prüfungen\n" + ca.cert.read_text())
    web = tmp_path / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {ca.directory / 'server-a.crt'}\n"
        f"  key_file: {ca.directory / 'server-a.key'}\n  client_ca_file: ca.pem\n"
        "  client_auth_type: VerifyClientCertIfGiven\n"
    )
    assert LiveWebConfig.load(web).server_tls().context.verify_mode == ssl.CERT_OPTIONAL


def test_a_web_config_broken_beyond_its_format_keeps_the_last_good_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Nested past the YAML reader's depth: neither a traceback nor a 500 for every request.
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users: {}\n")
    live = LiveWebConfig.load(web)
    replace(web, b"[" * 5000 + b"]" * 5000)
    with caplog.at_level(logging.WARNING, logger="exporter.webconfig"):
        assert live.refresh().basic_auth_users == {}
    assert "nested too deeply" in caplog.text and not live.successful
