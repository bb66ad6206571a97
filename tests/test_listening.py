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
