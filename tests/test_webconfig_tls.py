"""exporter-toolkit's whole web config, with real certificates (openssl) and a real TLS client.

TLS versions, cipher suites, the curve, client certificates (mTLS) and response headers are
each honoured; what Python's ssl cannot do is refused by name in one line.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from exporter.errors import ConfigError
from exporter.fleet import build_fleet
from exporter.server import build_app
from exporter.settings import load_settings
from exporter.webconfig import load_web_config, ssl_context
from tests.support import CATALOG, free_port, needs_tool

pytestmark = needs_tool("openssl")

Serve = Callable[[str], Awaitable[int]]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1, a client certificate, and a stranger's."""
    d = tmp_path_factory.mktemp("pki")
    # The extensions Python 3.13's strict verification (VERIFY_X509_STRICT) asks for.
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)  # fmt: skip
    leaf = "basicConstraints=CA:FALSE\nauthorityKeyIdentifier=keyid,issuer\n"
    for name, extension in [("server", leaf + "subjectAltName=IP:127.0.0.1"),
                            ("client", leaf + "extendedKeyUsage=clientAuth")]:  # fmt: skip
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        (d / f"{name}.ext").write_text(extension + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext",
                 "-out", f"{name}.crt", cwd=d)  # fmt: skip
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=stranger",
             "-addext", "keyUsage=critical,keyCertSign,digitalSignature,keyEncipherment",
             "-keyout", "stranger.key", "-out", "stranger.crt", cwd=d)  # fmt: skip
    return d


@pytest.fixture
async def serve(pki: Path, tmp_path: Path) -> AsyncIterator[Serve]:
    """Serve the exporter with a web config (YAML text after the certificate lines)."""
    runners: list[web.AppRunner] = []

    async def start(extra: str) -> int:
        path = tmp_path / f"web-{len(runners)}.yml"
        path.write_text(
            f"tls_server_config:\n  cert_file: {pki / 'server.crt'}\n"
            f"  key_file: {pki / 'server.key'}\n{extra}"
        )
        web_config = load_web_config(path)
        assert web_config.tls_server_config is not None
        settings = load_settings(None, data_source_name=f"host=127.0.0.1 port={free_port()}")
        app = build_app(settings, build_fleet(settings, CATALOG), web_config)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        context = ssl_context(web_config.tls_server_config, path)
        # Bound here to port 0: a port found free beforehand may be taken before the bind.
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(runner, sock, ssl_context=context).start()
        return int(sock.getsockname()[1])

    yield start
    for runner in runners:
        await runner.cleanup()


def client(pki: Path, **options: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if "max" in options:
        context.maximum_version = options["max"]
    if "ciphers" in options:
        context.set_ciphers(options["ciphers"])
    if "curve" in options:
        context.set_ecdh_curve(options["curve"])
    if "cert" in options:
        context.load_cert_chain(pki / f"{options['cert']}.crt", pki / f"{options['cert']}.key")
    return context


async def get(port: int, context: ssl.SSLContext) -> tuple[str, str, str]:
    """GET /healthz over TLS; return (TLS version, cipher, the whole HTTP answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        tls = writer.get_extra_info("ssl_object")
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = (await asyncio.wait_for(reader.read(), 10)).decode()
        return tls.version(), tls.cipher()[0], answer
    finally:
        writer.close()


async def refused(port: int, context: ssl.SSLContext) -> bool:
    """Tell whether the handshake or the first request fails."""
    try:
        _, _, answer = await get(port, context)
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return True
    return not answer.startswith("HTTP/1.1 200")


async def test_versions(pki: Path, serve: Serve) -> None:
    only13 = await serve("  min_version: TLS13\n")
    assert (await get(only13, client(pki)))[0] == "TLSv1.3"
    assert await refused(only13, client(pki, max=ssl.TLSVersion.TLSv1_2))
    only12 = await serve("  max_version: TLS12\n")
    assert (await get(only12, client(pki)))[0] == "TLSv1.2"


async def test_cipher_suites_and_curve(pki: Path, serve: Serve) -> None:
    port = await serve(
        "  max_version: TLS12\n"
        "  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]\n"
        "  curve_preferences: [CurveP384]\n"
    )
    _, cipher, answer = await get(port, client(pki, curve="secp384r1"))
    assert cipher == "ECDHE-RSA-AES128-GCM-SHA256" and answer.startswith("HTTP/1.1 200")
    assert await refused(port, client(pki, ciphers="ECDHE-RSA-AES256-GCM-SHA384"))
    assert await refused(port, client(pki, curve="prime256v1"))


async def test_client_certificates(pki: Path, serve: Serve) -> None:
    required = await serve(
        f"  client_ca_file: {pki / 'ca.crt'}\n  client_auth_type: RequireAndVerifyClientCert\n"
    )
    assert (await get(required, client(pki, cert="client")))[2].startswith("HTTP/1.1 200")
    assert await refused(required, client(pki))
    assert await refused(required, client(pki, cert="stranger"))
    if_given = await serve(
        f"  client_ca_file: {pki / 'ca.crt'}\n  client_auth_type: VerifyClientCertIfGiven\n"
    )
    assert (await get(if_given, client(pki)))[2].startswith("HTTP/1.1 200")
    assert (await get(if_given, client(pki, cert="client")))[2].startswith("HTTP/1.1 200")
    assert await refused(if_given, client(pki, cert="stranger"))


async def test_response_headers(pki: Path, serve: Serve) -> None:
    port = await serve(
        "http_server_config:\n  http2: false\n  headers:\n"
        "    Strict-Transport-Security: max-age=31536000\n    X-Frame-Options: deny\n"
    )
    answer = (await get(port, client(pki)))[2]
    assert "Strict-Transport-Security: max-age=31536000\r\n" in answer
    assert "X-Frame-Options: deny\r\n" in answer


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("  client_auth_type: RequestClientCert\n", "RequestClientCert"),
        ("  client_auth_type: RequireAnyClientCert\n", "RequireAnyClientCert"),
        ("  client_auth_type: RequireAndVerifyClientCert\n", "needs client_ca_file"),
        ("  curve_preferences: [CurveP256, X25519]\n", "one curve"),
        ("  curve_preferences: [CurveP999]\n", "CurveP999"),
        ("  cipher_suites: [TLS_FANCY]\n", "TLS_FANCY"),
        ("  min_version: TLS13\n  max_version: TLS12\n", "above max_version"),
        ("  min_version: SSL3\n", "min_version"),
        ("http_server_config:\n  headers:\n    Set-Cookie: x\n", "Set-Cookie"),
        ("http_server_config:\n  http3: true\n", "http3"),
    ],
)
def test_what_python_cannot_do_is_refused_by_name(
    pki: Path, tmp_path: Path, extra: str, expected: str
) -> None:
    path = tmp_path / "web.yml"
    path.write_text(
        f"tls_server_config:\n  cert_file: {pki / 'server.crt'}\n"
        f"  key_file: {pki / 'server.key'}\n{extra}"
    )
    with pytest.raises(ConfigError) as error:
        load_web_config(path)
    assert expected in str(error.value) and "\n" not in str(error.value)
