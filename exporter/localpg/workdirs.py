"""Where servers live on disk: their temporary directories, and the initdb templates they copy."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path


def temp_base() -> Path:
    """Return the directory that holds the servers' temporary directories.

    ``$LOCALPG_TMPDIR`` if set; else ``/dev/shm`` when it is a world-writable
    tmpfs with at least 1 GiB free; else ``/tmp``. Creating files is what initdb
    and a cluster copy spend their time on, and on a VM's ext4 ``/tmp`` that is
    some 50 times slower than on tmpfs (initdb 1-2.5 s against 0.3-0.8 s). Both
    are world-traversable, which the ``nobody`` server needs; ``$TMPDIR`` may not be.
    """
    env = os.environ.get("LOCALPG_TMPDIR")
    if env:
        return Path(env)
    shm = Path("/dev/shm")
    with contextlib.suppress(OSError):
        vfs = os.statvfs(shm)
        # Docker's default /dev/shm is 64 MiB: too small for a few clusters.
        roomy = vfs.f_bavail * vfs.f_frsize >= 1 << 30
        if roomy and shm.stat().st_mode & 0o1777 == 0o1777:
            return shm
    return Path("/tmp")


def _template_root() -> Path:
    return temp_base() / f"pg-health-exporter-initdb-{os.geteuid()}"


def template_dir(bindir: Path, initdb_args: Sequence[str | Path]) -> Path:
    """Return where a fresh cluster of ``bindir`` made with ``initdb_args`` is kept."""
    postgres = (bindir / "postgres").resolve()
    st = postgres.stat()
    # A changed binary or other initdb options must not reuse an old cluster.
    ident = f"{postgres}:{st.st_size}:{st.st_mtime_ns}:{[str(a) for a in initdb_args]}"
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return _template_root() / key


def save_template(datadir: Path, template: Path) -> None:
    """Keep a copy of a just-initialised ``datadir``; initdb is the slow part of start()."""
    root = _template_root()
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        # The base is world-writable: a directory planted by someone else must not
        # feed our servers.
        if root.stat().st_uid != os.geteuid():
            return
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
        try:
            shutil.copytree(datadir, staging / "data", symlinks=True)
            with contextlib.suppress(OSError):  # another process saved it first
                (staging / "data").rename(template)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError:
        return  # only a speed-up: the next start runs initdb again


__all__ = ["save_template", "temp_base", "template_dir"]
