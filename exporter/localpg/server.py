"""A throwaway PostgreSQL server: create, start, stop, crash, restart, clean up, and standbys."""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from exporter.localpg.binaries import (
    SERVER_PROGRAMS,
    find_bindir,
    has_server,
    major_from_num,
    pkglibdir,
    server_version_num,
)
from exporter.localpg.errors import LocalPostgresError, one_line
from exporter.localpg.processes import children_of, pid_alive, proc_start_time, sweep_orphans
from exporter.localpg.replication import (
    basebackup_args,
    find_client_tool,
    primary_conninfo,
    wait_streaming,
    with_primary_conninfo,
)
from exporter.localpg.serveruser import (
    SERVER_USER,
    ServerUser,
    other_can_traverse,
    runnable_copy,
)
from exporter.localpg.workdirs import save_template, temp_base, template_dir

_CONF_BEGIN = "# --- exporter.localpg settings: begin ---"
_CONF_END = "# --- exporter.localpg settings: end ---"
_STOP_MODES = ("smart", "fast", "immediate")
_LOG_TAIL_LINES = 12


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


# Servers not cleaned up by interpreter exit are stopped and their directories
# removed, so a crashed test run does not leave postmasters and clusters behind.
_live: set[LocalPostgres] = set()


@atexit.register
def _cleanup_live() -> None:
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.cleanup()


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
        self._user = ServerUser(SERVER_USER) if os.geteuid() == 0 else None
        #: Seconds the last successful ``pg_ctl -w start`` took (None before one).
        self.start_seconds: float | None = None

    # ---------------------------------------------------------------- properties

    @property
    def bindir(self) -> Path:
        """Return the bin directory actually used (a world-readable copy when root needs one)."""
        if self._bindir is None:
            source = self._given_bindir if self._given_bindir is not None else find_bindir()
            if not has_server(source):
                raise LocalPostgresError(f"{source} does not contain {', '.join(SERVER_PROGRAMS)}")
            if self._user is not None and not self._user.can_run(source):
                source = runnable_copy(self._user, source)
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
        return major_from_num(self.version_num)

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
        return pid is not None and pid_alive(pid)

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
            raise LocalPostgresError(f"pg_ctl stop failed: {one_line(proc.stderr + proc.stdout)}")

    def kill(self) -> None:
        """SIGKILL the postmaster (and its children) to simulate a crash."""
        pid = self._postmaster_pid()
        if pid is None or not pid_alive(pid):
            raise LocalPostgresError("server is not running; nothing to kill")
        children = children_of(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        # Orphaned backends would keep the shared memory attached and make the
        # next start refuse ("pre-existing shared memory block is still in use").
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(pid_alive(p) for p in (pid, *children)):
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
            args = basebackup_args(basebackup, primary_port=self.port, datadir=standby.datadir)
            proc = standby._run(args, timeout=300)
            if proc.returncode != 0:
                raise LocalPostgresError(
                    f"pg_basebackup failed: {one_line(proc.stderr + proc.stdout)}"
                )
            auto = standby.datadir / "postgresql.auto.conf"
            conninfo = _conf_quote(primary_conninfo(self.port))
            text = auto.read_text() if auto.exists() else ""
            standby._write_owned(auto, with_primary_conninfo(text, conninfo))
            standby.start()
            wait_streaming(standby.logfile, port=standby._port, timeout=timeout)
        except BaseException:
            standby.cleanup()
            raise
        self._standbys.append(standby)
        return standby

    # ------------------------------------------------------------------ internals

    def _workdir(self) -> Path:
        if self._tmpdir is None:
            raise LocalPostgresError("server has no directory yet: call start() first")
        return self._tmpdir

    def _ensure_workdir(self) -> None:
        if self._tmpdir is not None:
            return
        sweep_orphans()
        tmpdir = Path(tempfile.mkdtemp(prefix="localpg-", dir=temp_base()))
        (tmpdir / "sock").mkdir()
        # Lets a later process tell a leftover of a dead run from a live server.
        (tmpdir / "owner").write_text(f"{os.getpid()} {proc_start_time(os.getpid())}\n")
        if self._user is not None:
            if not other_can_traverse(tmpdir.parent, self._user.uid):
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
        template = template_dir(bindir, args[3:]) if self._template else None
        if template is not None and (template / "PG_VERSION").is_file():
            self._copy_template(template)
            return
        proc = self._run(args, timeout=180)
        if proc.returncode != 0:
            raise LocalPostgresError(f"initdb failed: {one_line(proc.stderr + proc.stdout)}")
        if template is not None:
            save_template(self.datadir, template)

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
        libdir = pkglibdir(self.bindir)
        self._preloaded = tuple(
            name
            for name in self._preload
            if libdir is not None and (libdir / f"{name}.so").is_file()
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
            tail = one_line("\n".join(lines[-_LOG_TAIL_LINES:]))
        # pg_ctl may leave a postmaster behind when -w timed out; do not orphan it.
        if self.running:
            with contextlib.suppress(LocalPostgresError):
                self.kill()
        said = one_line(proc.stderr + proc.stdout, 500)
        return (
            f"PostgreSQL {self.major} did not start on 127.0.0.1:{self._port} "
            f"(pg_ctl: {said}); server log: {tail or '(empty)'}"
        )

    def _tool(self, name: str, *, min_major: int) -> Path:
        """Find client program ``name``, here or in another install at least ``min_major``."""
        bindir = find_client_tool(name, min_major=min_major, own_bindir=self.bindir)
        if bindir != self.bindir and self._user is not None and not self._user.can_run(bindir):
            bindir = runnable_copy(self._user, bindir)
        return bindir / name


__all__ = ["LocalPostgres"]
