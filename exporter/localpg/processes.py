"""Processes seen through /proc: alive or not, children, start times; and sweeping the servers
whose owner died without stopping them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path

from exporter.localpg.workdirs import temp_base


def pid_alive(pid: int) -> bool:
    """Tell whether ``pid`` runs; a zombie nobody has reaped counts as gone."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the parenthesised command name, which may contain spaces.
    return stat_line.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def children_of(pid: int) -> list[int]:
    children: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return children


def proc_start_time(pid: int) -> str | None:
    """Return the start time of ``pid`` (clock ticks since boot), which tells PID reuse apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


_swept = False


def sweep_orphans() -> None:
    """Stop and delete servers whose owning process died without cleaning up.

    ``atexit`` does not run when a test run is SIGKILLed (a CI or tool timeout),
    and ``pg_ctl`` detaches the postmaster, so such servers would run forever.
    Only directories whose ``owner`` file this user wrote are touched.
    """
    global _swept
    if _swept:
        return
    _swept = True
    for tmpdir in temp_base().glob("localpg-*"):
        try:
            owner_file = tmpdir / "owner"
            if owner_file.stat().st_uid != os.geteuid():
                continue
            pid_text, started = owner_file.read_text().split()
        except (OSError, ValueError):
            continue
        if proc_start_time(int(pid_text)) == started:
            continue  # its owner still runs
        with contextlib.suppress(OSError, ValueError, IndexError):
            postmaster = int((tmpdir / "data" / "postmaster.pid").read_text().split()[0])
            if pid_alive(postmaster):
                # SIGQUIT is an immediate shutdown: the postmaster still frees its
                # shared memory, which SIGKILL would leak.
                os.kill(postmaster, signal.SIGQUIT)
                deadline = time.monotonic() + 5
                while pid_alive(postmaster) and time.monotonic() < deadline:
                    time.sleep(0.02)
                if pid_alive(postmaster):
                    continue  # leave what we could not stop
        shutil.rmtree(tmpdir, ignore_errors=True)


__all__ = ["children_of", "pid_alive", "proc_start_time", "sweep_orphans"]
