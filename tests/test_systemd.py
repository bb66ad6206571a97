"""deploy/systemd/pg-health-exporter.service: systemd accepts it, and it is hardened.

``systemd-analyze verify`` loads the unit as systemd would (unknown keys, bad values, a
missing executable) and ``systemd-analyze security --offline=true`` scores its sandboxing
without a running systemd. The hardening itself is not exercised at run time here: this
machine's PID 1 is not systemd.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parent.parent / "deploy" / "systemd" / "pg-health-exporter.service"
INSTALLED_PATH = "/opt/pg-health-exporter/bin/pg-health-exporter"
#: systemd-analyze security's exposure, 0 (locked down) to 10, times ten: 1.5 or less.
EXPOSURE_THRESHOLD = 15
HARDENING = {
    "DynamicUser": "yes",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "CapabilityBoundingSet": "",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "SystemCallFilter": "@system-service",
    "SystemCallArchitectures": "native",
    "MemoryDenyWriteExecute": "yes",
}


def _directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        match = re.match(r"([A-Za-z]+)=(.*)$", line)
        if match:
            found.setdefault(match.group(1), []).append(match.group(2))
    return found


@pytest.fixture
def unit_here(tmp_path: Path) -> Path:
    """Return a copy of the unit whose ExecStart names the exporter installed on this machine."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    # The entry point beside this interpreter (a virtualenv's bin/ is not always on PATH).
    beside = Path(sys.executable).parent / "pg-health-exporter"
    executable = str(beside) if beside.is_file() else shutil.which("pg-health-exporter")
    if executable is None:
        pytest.skip("pg-health-exporter is not installed as a command (pip install -e .)")
    text = UNIT.read_text()
    assert INSTALLED_PATH in text
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(INSTALLED_PATH, executable))
    return unit


def test_systemd_analyze_verify_accepts_the_unit(unit_here: Path) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit_here)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # An unknown key is only a warning (exit 0): any output at all fails the test.
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), (
        proc.stdout + proc.stderr
    )


def test_sandboxing_scores_as_low_exposure(unit_here: Path) -> None:
    proc = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=true",
            f"--threshold={EXPOSURE_THRESHOLD}",
            str(unit_here),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    overall = [line for line in proc.stdout.splitlines() if "Overall exposure" in line]
    assert proc.returncode == 0, "\n".join(overall) or proc.stderr


def test_unit_states_the_usual_hardening() -> None:
    directives = _directives()
    for key, value in HARDENING.items():
        assert value in directives.get(key, []), f"{key}={value} missing"
    assert "~@privileged @resources" in directives["SystemCallFilter"]
    assert directives["ExecStart"][0].startswith(INSTALLED_PATH + " --config ")
