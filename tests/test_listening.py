"""Where the exporter listens, as postgres_exporter's deployments say it: several
`--web.listen-address` flags, or the sockets systemd passes (`--web.systemd-socket`)."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.process import exporter_process
from tests.support import REPOSITORY, Server, free_port, wait_for

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_every_listen_address_serves(pg: Server, tmp_path: Path) -> None:
    second = free_port()
    with exporter_process(
        tmp_path, dsn=pg.monitor(), args=["--web.listen-address", f"127.0.0.1:{second}"]
    ) as exporter:
        for port in (exporter.port, second):
            status, body = _get(port, "/metrics")
            assert status == 200 and b"\npg_up 1" in body
        serving = [line for line in exporter.log().splitlines() if "serving on" in line]
        assert len(serving) == 2, serving


@pytest.mark.skipif(SOCKET_ACTIVATE is None, reason="systemd-socket-activate not installed")
def test_systemd_socket_activation(pg: Server, tmp_path: Path) -> None:
    assert SOCKET_ACTIVATE is not None
    port = free_port()
    log_path = tmp_path / "exporter.log"
    with log_path.open("wb") as log:
        # systemd-socket-activate listens, then starts the exporter on the first connection
        # with the socket as descriptor 3, LISTEN_FDS=1 and LISTEN_PID set, as systemd does;
        # the child's environment is only what --setenv gives it.
        environment = {
            "HOME": "/tmp",
            "PYTHONPATH": str(REPOSITORY),
            "DATA_SOURCE_NAME": pg.monitor(),
        }
        activator = subprocess.Popen(
            [SOCKET_ACTIVATE, "--listen", f"127.0.0.1:{port}",
             *(f"--setenv={name}={value}" for name, value in environment.items()),
             "--", sys.executable, "-m", "exporter", "--web.systemd-socket"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={"PATH": os.environ["PATH"]},
            cwd=REPOSITORY,
        )  # fmt: skip
    try:
        wait_for(
            "the activator to listen",
            lambda: "Listening on" in log_path.read_text(errors="replace"),
            timeout=10,
        )
        status, body = _get(port, "/metrics")
        assert status == 200 and b"\npg_up 1" in body
        assert f"serving on http://127.0.0.1:{port}/metrics" in log_path.read_text()
    finally:
        activator.send_signal(signal.SIGTERM)
        activator.wait(timeout=10)


def test_systemd_socket_without_systemd_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--web.systemd-socket"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "HOME": "/tmp", "PYTHONPATH": str(REPOSITORY)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "--web.systemd-socket: no socket passed by systemd" in line


# Run inside a network namespace of its own (only a loopback), so that listening on every
# interface exposes nothing of this machine: an exporter on ":PORT", reached over IPv4 and IPv6.
_IN_NAMESPACE = """\
import subprocess, sys, time, urllib.request
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
if sys.argv[1] == "no-ipv6":
    subprocess.run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"], check=True)
    subprocess.run(["sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=1"], check=True)
exporter = subprocess.Popen(
    [sys.executable, "-m", "exporter", "--web.listen-address", ":9187"],
    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
)
try:
    for url in ("http://127.0.0.1:9187/healthz", "http://[::1]:9187/healthz"):
        for _ in range(100):
            try:
                print(url, urllib.request.urlopen(url, timeout=2).status)
                break
            except OSError as exc:
                reason = exc
                time.sleep(0.1)
        else:
            print(url, "unreachable:", reason)
finally:
    exporter.terminate()
    print(exporter.communicate(timeout=10)[0])
"""


def _in_a_namespace(mode: str) -> str:
    result = subprocess.run(
        ["unshare", "--net", "--", sys.executable, "-c", _IN_NAMESPACE, mode],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "HOME": "/tmp", "PYTHONPATH": str(REPOSITORY),
             "DATA_SOURCE_NAME": "host=127.0.0.1 port=1 connect_timeout=1"},
        cwd=REPOSITORY,
        timeout=120,
        check=False,
    )  # fmt: skip
    if result.returncode != 0 and "unshare" in result.stderr:
        pytest.skip(f"no network namespace here: {result.stderr.strip()[:200]}")
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs unshare")
def test_an_empty_host_serves_ipv4_and_ipv6() -> None:
    # As Go's ":9187" (postgres_exporter's default): one dual-stack socket.
    out = _in_a_namespace("ipv6")
    assert "http://127.0.0.1:9187/healthz 200" in out, out
    assert "http://[::1]:9187/healthz 200" in out, out
    assert "serving on http://[::]:9187/metrics" in out, out


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs unshare")
def test_an_empty_host_without_ipv6_serves_ipv4() -> None:
    # IPv6 switched off on the host (a common hardening): IPv4 is served all the same.
    out = _in_a_namespace("no-ipv6")
    assert "http://127.0.0.1:9187/healthz 200" in out, out
