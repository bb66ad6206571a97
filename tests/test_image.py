"""The container image, built with buildah on a Debian 12 base and run against a real server.

Slow: the first build on a machine makes the base with debootstrap (about a minute), and
every build installs the wheels from PyPI (about half a minute). The suite runs once per
PostgreSQL major; ``scripts/build_image.py --reuse`` builds once for a given build context.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Server, find_tool, free_port, missing_tool

ROOT = Path(__file__).parent.parent
# One tag per checkout: several checkouts on one machine must not rebuild each other's image
# between a build and its test (the revision label would then be another checkout's).
CHECKOUT_ID = hashlib.sha256(str(ROOT.resolve()).encode()).hexdigest()[:8]
TAG = f"localhost/pg-health-exporter:test-{CHECKOUT_ID}"
BUILDAH = ("buildah", "--storage-driver", "vfs")
# The exporter runs as root-less UID/GID 10001 (the Dockerfile's USER).
IMAGE_USER = "10001:10001"

pytestmark = pytest.mark.slow


def _why_no_build() -> str | None:
    if find_tool("buildah") is None:
        return missing_tool("buildah")
    if os.geteuid() != 0:
        return "buildah with vfs storage and debootstrap need root here"
    base_cached = (
        subprocess.run(
            [*BUILDAH, "images", "--quiet", "localhost/pg-health-exporter-base:debian12"],
            capture_output=True,
            check=False,
        ).stdout.strip()
        != b""
    )
    if find_tool("debootstrap") is None and not base_cached:
        return "debootstrap is not installed, and no Debian 12 base is cached for buildah"
    return None


def _buildah(*args: str, timeout: float = 120) -> str:
    proc = subprocess.run(
        [*BUILDAH, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"buildah {' '.join(args)}: {proc.stderr[-2000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def image() -> str:
    """Build the image (or reuse the one built from the same context) and return its name."""
    reason = _why_no_build()
    if reason is not None:
        pytest.skip(reason)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_image.py"), "--tag", TAG, "--reuse"],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"image ready in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def inspected(image: str) -> dict[str, Any]:
    """Return ``buildah inspect`` of the image."""
    data = json.loads(_buildah("inspect", "--type", "image", image))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[str]:
    """Return a working container made from the image, removed afterwards."""
    name = _buildah("from", image).strip()
    yield name
    _buildah("rm", name)


class Running:
    """The exporter's process inside the container, as ``buildah run`` started it."""

    def __init__(self, container: str, port: int, dsn: str) -> None:
        self.port = port
        self.process = subprocess.Popen(
            [
                *BUILDAH,
                "run",
                "--isolation",
                "chroot",
                "--env",
                # postgres_exporter's variable: nothing in the image may override it.
                f"PG_EXPORTER_WEB_LISTEN_ADDRESS=127.0.0.1:{port}",
                "--env",
                f"DATA_SOURCE_NAME={dsn}",
                container,
                "--",
                "pg-health-exporter",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def get(self, path: str) -> str:
        """Return the body of a GET, waiting up to 30 s for the exporter to listen."""
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}{path}", timeout=20
                ) as response:
                    return str(response.read().decode())
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def exporter_pids(self) -> list[int]:
        """Return the pids of the exporter's Python process (children of buildah's runtime)."""
        found = []
        for status in Path("/proc").glob("[0-9]*/status"):
            pid = int(status.parent.name)
            try:
                cmdline = (status.parent / "cmdline").read_bytes()
                session = os.getsid(pid)
            except OSError:
                continue
            if b"/opt/pg-health-exporter/bin/python" in cmdline and session == self.process.pid:
                found.append(pid)
        return found

    def stop(self) -> str:
        """Stop buildah run and what it started; return the output."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            output, _ = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            output, _ = self.process.communicate()
        return output


@pytest.fixture(scope="module")
def running(container: str, pg: Server) -> Iterator[Running]:
    """Run the image's exporter against the suite's server, as its pg_monitor role."""
    exporter = Running(container, free_port(), pg.monitor())
    yield exporter
    exporter.stop()


def test_scrape_of_the_image_reaches_postgresql(running: Running) -> None:
    metrics = running.get("/metrics")
    assert "\npg_up 1.0\n" in f"\n{metrics}" or "\npg_up 1\n" in f"\n{metrics}", metrics[:2000]
    assert "pg_exporter_collector_success" in metrics
    # The runbook every alert links to is package data: served from the image too.
    assert "<h2" in running.get("/runbook")


def test_exporter_process_runs_as_the_images_non_root_user(
    running: Running, inspected: dict[str, Any]
) -> None:
    assert inspected["OCIv1"]["config"]["User"] == IMAGE_USER
    running.get("/healthz")
    pids = running.exporter_pids()
    assert pids, "no exporter process found under buildah run"
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        gids = next(line for line in status.splitlines() if line.startswith("Gid:")).split()[1:]
        assert set(uids) == {"10001"} and set(gids) == {"10001"}, status


def test_health_check_command_passes_while_serving_and_fails_when_not(
    running: Running, container: str, inspected: dict[str, Any]
) -> None:
    check = inspected["Docker"]["config"]["Healthcheck"]["Test"]
    assert check[0] == "CMD" and "/healthz" in check[-1]
    running.get("/healthz")
    # Ours, or postgres_exporter's variable (a deployment switching over keeps its own).
    for variable in ("PG_EXPORTER_LISTEN_ADDRESS", "PG_EXPORTER_WEB_LISTEN_ADDRESS"):
        listen = f"{variable}=127.0.0.1:{running.port}"
        healthy = subprocess.run(
            [*BUILDAH, "run", "--isolation", "chroot", "--env", listen, container, "--",
             *check[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )  # fmt: skip
        assert healthy.returncode == 0, healthy.stderr[-2000:]
    # The same command against a port nobody listens on: the check must fail.
    nobody = f"PG_EXPORTER_LISTEN_ADDRESS=127.0.0.1:{free_port()}"
    unhealthy = subprocess.run(
        [*BUILDAH, "run", "--isolation", "chroot", "--env", nobody, container, "--", *check[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert unhealthy.returncode != 0


def test_oci_labels_name_the_source_version_revision_and_licence(
    inspected: dict[str, Any],
) -> None:
    labels = inspected["OCIv1"]["config"]["Labels"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.source"]
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    if head.returncode == 0:
        assert labels["org.opencontainers.image.revision"] == head.stdout.strip()
    else:
        assert labels["org.opencontainers.image.revision"] == "unknown"


def test_image_holds_the_catalog_dashboards_and_no_pip(container: str) -> None:
    listing = _buildah(
        "run",
        "--isolation",
        "chroot",
        container,
        "--",
        "sh",
        "-c",
        "pg-health-exporter check-config; ls /usr/share/pg-health-exporter/dashboards;"
        " ls /opt/pg-health-exporter/bin",
    )
    assert "collectors loaded" in listing
    assert "alerts.yml" in listing and "overview.json" in listing
    assert "\npip\n" not in f"\n{listing}\n"


def test_serving_writes_nothing_outside_tmp(running: Running, container: str) -> None:
    """The Kubernetes base mounts the root filesystem read-only, with an emptyDir on /tmp."""
    running.get("/metrics")
    running.get("/")
    # As root, so that find may look everywhere; -user 10001: what the exporter made.
    written = _buildah(
        "run",
        "--isolation",
        "chroot",
        "--user",
        "0:0",
        container,
        "--",
        "find",
        "/",
        "-xdev",
        "-user",
        "10001",
        "-not",
        "-path",
        "/tmp/*",
    )
    assert written.strip() == "", written[:2000]
