"""An exporter run as its own process, as an operator runs it: its log, its memory, its limits."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support import REPOSITORY, free_port

# Sets the open-file limit inside the child itself, then runs the exporter's command line.
_LIMITED = """\
import resource, runpy, sys
limit = int(sys.argv.pop(1))
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
sys.argv[0] = "pg-health-exporter"
runpy.run_module("exporter", run_name="__main__")
"""

#: Ports tried, each found free, before giving up on starting an exporter.
PORT_ATTEMPTS = 5


@dataclass
class ExporterProcess:
    """A running exporter: where it listens, its process and its log file."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    tls: ssl.SSLContext | None = None

    def log(self) -> str:
        """Return everything the exporter wrote to stdout and stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def rss_bytes(self) -> int:
        """Return the exporter's resident memory now."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc/PID/status")

    def open_files(self) -> int:
        """Return how many file descriptors the exporter holds now."""
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def get(
        self, path: str, headers: Mapping[str, str] | None = None, *, timeout: float = 30
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one GET on a fresh connection; return status, headers and body."""
        return self.request("GET", path, headers, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        *,
        timeout: float = 30,
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request on a fresh connection; return status, headers and body."""
        conn = (
            http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout, context=self.tls)
            if self.tls is not None
            else http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        )
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()


class PortTaken(Exception):
    """The exporter could not listen: something else took its free port first."""


def _wait_until_serving(exporter: ExporterProcess, deadline: float) -> None:
    # Serving means this process said so for its port: a 200 on the port alone may come from
    # another process that took the port between free_port() and the exporter's bind.
    serving = f":{exporter.port}"
    while time.monotonic() < deadline:
        if exporter.process.poll() is not None:
            log = exporter.log()
            if f"cannot listen on 127.0.0.1:{exporter.port}: address already in use" in log:
                raise PortTaken(log)
            raise AssertionError(f"exporter exited with {exporter.process.returncode}:\n{log}")
        if not any(
            "serving on" in line and serving in line for line in exporter.log().splitlines()
        ):
            time.sleep(0.1)
            continue
        try:
            status, _, _ = exporter.get("/healthz", timeout=2)
        except OSError:
            time.sleep(0.1)
            continue
        if status == 200:
            return
    raise AssertionError(f"exporter did not serve within the deadline:\n{exporter.log()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve_on_a_free_port(
    start: Callable[[int], subprocess.Popen[bytes]], log_of: Callable[[int], Path]
) -> tuple[subprocess.Popen[bytes], int]:
    """Start an exporter with ``start(port)`` on a free port; return it and the port it serves.

    Ready when its log (``log_of(port)``) says it serves on that port. When another process
    took the port first, the exporter exits saying so, and it is started again on another.
    """
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = free_port()
        process = start(port)
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                text = log_of(port).read_text(encoding="utf-8", errors="replace")
            if any("serving on" in line and f":{port}/" in line for line in text.splitlines()):
                return process, port
            if process.poll() is not None:
                break
            time.sleep(0.1)
        else:
            _stop(process)
            raise AssertionError(f"exporter did not serve within 30 s:\n{text}")
        taken = f"cannot listen on 127.0.0.1:{port}: address already in use" in text
        if not taken or attempt == PORT_ATTEMPTS:
            raise AssertionError(f"exporter exited with {process.returncode}:\n{text}")
    raise AssertionError("unreachable")


def start_exporter_on_a_free_port(
    directory: Path,
    processes: list[subprocess.Popen[bytes]],
    arguments: Callable[[int], Sequence[str]],
    *,
    env: Mapping[str, str],
    cwd: Path | None = None,
) -> tuple[int, Path]:
    """Start `pg-health-exporter ARGUMENTS(port)` on a free port; return the port and its log.

    ``arguments(port)`` makes the command line for a port (writing a settings file for it, if
    the test wants one); the log is ``directory/exporter-PORT.log``; the process is appended
    to ``processes`` at once, for the caller to stop.
    """

    def log_of(port: int) -> Path:
        return directory / f"exporter-{port}.log"

    def start(port: int) -> subprocess.Popen[bytes]:
        with log_of(port).open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "exporter", *arguments(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
            )
        processes.append(process)
        return process

    _, port = serve_on_a_free_port(start, log_of)
    return port, log_of(port)


@contextmanager
def exporter_process(
    log_dir: Path,
    *,
    dsn: str | None,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    open_files: int | None = None,
    tls_ca: Path | None = None,
) -> Iterator[ExporterProcess]:
    """Run `pg-health-exporter` on a free port of 127.0.0.1 until the block ends.

    `open_files` sets RLIMIT_NOFILE (soft and hard) in the child, as systemd's LimitNOFILE
    would. `tls_ca`: the exporter serves HTTPS (its web config says so) with a certificate
    this CA file verifies. The process is stopped with SIGTERM (then SIGKILL) afterwards.
    """
    tls = ssl.create_default_context(cafile=str(tls_ca)) if tls_ca is not None else None
    for attempt in range(1, PORT_ATTEMPTS + 1):
        # Another process may take the free port before the exporter binds it: then again,
        # on another port.
        port = free_port()
        log_path = log_dir / f"exporter-{port}.log"
        command = [sys.executable]
        if open_files is not None:
            command += ["-c", _LIMITED, str(open_files)]
        else:
            command += ["-m", "exporter"]
        command += ["--web.listen-address", f"127.0.0.1:{port}", *args]
        child_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": "/tmp",
            "PYTHONPATH": str(REPOSITORY),
            **({"DATA_SOURCE_NAME": dsn} if dsn is not None else {}),
            **(env or {}),
        }
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, env=child_env, cwd=REPOSITORY
            )
        exporter = ExporterProcess(process, port, log_path, tls)
        try:
            _wait_until_serving(exporter, time.monotonic() + 30)
        except PortTaken:
            _stop(process)
            if attempt == PORT_ATTEMPTS:
                raise
            continue
        except BaseException:
            _stop(process)
            raise
        break
    try:
        yield exporter
    finally:
        _stop(process)
