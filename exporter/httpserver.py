"""The listening socket, and the bounds on what one client may hold of it.

aiohttp alone lets any client keep a connection for as long as it likes to send its request
head, and accepts connections until the process runs out of file descriptors; past that,
asyncio logs a traceback for every accept it cannot make, and nobody is served. This module
serves an aiohttp application with three bounds, in the spirit of Go's `http.Server`:

- `request_head_timeout`: a request's head (request line and headers) must arrive within this
  time, from the connection's start or from the first byte after an idle spell (Go's
  ReadHeaderTimeout);
- `idle_timeout`: a kept-alive connection with no request is closed after this (IdleTimeout);
- `max_connections`: at most this many connections at once, counted from their accept (with
  TLS, before the handshake). A new connection over the bound closes the oldest connection
  still sending its head (or its handshake) or idle, of the client address that holds the most
  connections; only if every connection is busy with a request is the new one closed at once.
  So a flood of slow or idle clients can never keep out a client that sends its request
  promptly, as Prometheus does, from another address.

Hitting the bound is logged once, in one line, and again only after the load has gone down;
an accept that fails for want of file descriptors (from other causes) is logged once a minute,
in one line, never as a traceback per socket.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import signal
import socket
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from exporter.errors import ExporterError
from exporter.settings import Settings
from exporter.webconfig import ServerTLS

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# File descriptors kept back from the connection bound for everything else the process opens:
# the listening socket, logs, TLS files, DNS, the interpreter's own (database connections are
# added to this by the caller).
FD_RESERVE = 64
# The listen queue; also how many connections asyncio may accept before any is counted.
BACKLOG = 128
# Fewer connections than this would not serve even a few Prometheus servers.
MIN_CONNECTIONS = 8
# How often idle and slow connections are looked for.
SWEEP_SECONDS = 1.0
# The bound counts as no longer hit once the connections fall below this share of it.
CALM_SHARE = 0.8
# asyncio's message for an accept() that failed for want of file descriptors or memory.
ACCEPT_FAILED = "socket.accept() out of system resource"
ACCEPT_FAILED_LOG_SECONDS = 60.0
# Clients refused for their certificate's names are logged at most this often.
REFUSED_CLIENT_LOG_SECONDS = 60.0

# The TLS for a new connection: called at each accept, so a changed certificate applies.
TLSSource = Callable[[], ServerTLS]


@dataclass(frozen=True)
class ConnectionLimits:
    """What one client may hold: the bounds of the HTTP server."""

    max_connections: int
    request_head_timeout: float
    idle_timeout: float


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one, as Go programs do; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def connection_limits(settings: Settings, database_connections: int) -> ConnectionLimits:
    """Return the HTTP server's bounds, the connection bound fitted under the open-file limit.

    Raises the soft open-file limit to the hard one first. If the bound must come down to fit,
    one line says so.
    """
    open_files = raise_open_file_limit()
    # asyncio accepts up to BACKLOG connections before any is counted, and each may close
    # another to make room, whose descriptor is freed a moment later.
    reserved = FD_RESERVE + 2 * BACKLOG + database_connections
    wanted = settings.http_max_connections
    fitted = connections_within(open_files, wanted, reserved)
    if fitted < wanted:
        log.warning(
            "http_max_connections %d lowered to %d: the open-file limit is %d and %d are kept"
            " for database connections and the rest of the process",
            wanted,
            fitted,
            open_files,
            reserved,
        )
    return ConnectionLimits(
        max_connections=fitted,
        request_head_timeout=settings.http_request_head_timeout_seconds,
        idle_timeout=settings.http_idle_timeout_seconds,
    )


def connections_within(open_files: int, wanted: int, reserved: int) -> int:
    """Return the connection bound that fits under an open-file limit.

    >>> connections_within(1024, 512, 168), connections_within(1024, 2000, 168)
    (512, 856)
    >>> connections_within(100, 512, 168)
    8
    """
    if open_files == resource.RLIM_INFINITY:
        return wanted
    return max(MIN_CONNECTIONS, min(wanted, open_files - reserved))


class _Connection(asyncio.Protocol):
    """One client connection: aiohttp's protocol behind it, its state as the gate sees it.

    With TLS, the connection is counted (and may be closed to make room) from the moment it is
    accepted, not only once its handshake is over: the handshake is started here, with
    `loop.start_tls`, rather than by the listening socket.
    """

    __slots__ = (
        "closed",
        "gate",
        "handshake",
        "inner",
        "peer",
        "since",
        "started",
        "state",
        "transport",
    )

    HEAD = "head"  # waiting for (the rest of) a request head, or for the TLS handshake
    BUSY = "busy"  # a request is being handled
    IDLE = "idle"  # kept alive between requests

    def __init__(self, gate: ConnectionGate, inner: asyncio.Protocol) -> None:
        self.gate = gate
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.state = self.HEAD
        self.since = 0.0
        self.closed = False
        self.started = False  # aiohttp's protocol has its transport
        self.handshake: asyncio.Task[None] | None = None
        self.peer = ""  # the client's address, without its port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if isinstance(peername, tuple) else str(peername)
        if self.gate.tls is None:
            self._start(transport)
            self.gate.opened(self)
            return
        transport.pause_reading()  # the ClientHello is for the TLS layer, not for aiohttp
        self.gate.opened(self)
        if not self.closed:
            self.handshake = asyncio.get_running_loop().create_task(
                self._start_tls(transport, self.gate.tls())
            )

    def _start(self, transport: asyncio.Transport) -> None:
        self.started = True
        self.inner.connection_made(transport)

    async def _start_tls(self, raw: asyncio.Transport, tls: ServerTLS) -> None:
        loop = asyncio.get_running_loop()
        try:
            secure = await loop.start_tls(
                raw,
                self,
                tls.context,
                server_side=True,
                ssl_handshake_timeout=self.gate.limits.request_head_timeout,
            )
        except OSError:  # failed, timed out, or closed to make room: start_tls closed it
            self.gate.forget(self)
            return
        if secure is None or self.closed:
            if secure is not None:
                secure.close()
            return
        if not tls.admits(secure.get_extra_info("peercert")):
            # client_allowed_sans: exporter-toolkit fails such a handshake; Python's ssl has
            # no hook inside it, so the connection is closed right after, before any request.
            self.gate.refused_client(self)
            self.closed = True
            secure.abort()
            return
        self.gate.secured(self, raw, secure)
        self.transport = secure
        self._start(secure)

    def data_received(self, data: bytes) -> None:
        if self.state == self.IDLE:
            self.gate.head_started(self)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.started else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.gate.forget(self)
        if self.started:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.started:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.started:
            self.inner.resume_writing()

    def close(self) -> None:
        """Close this connection now, dropping anything unsent; the gate has forgotten it.

        `abort`, not `close`: a client that does not read would keep a closed transport (and
        its file descriptor) until its buffer drained.
        """
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class ConnectionGate:
    """Track every client connection and enforce the bounds of ConnectionLimits.

    Connections waiting for a head and idle ones are kept in two queues in the order their
    wait began, so the oldest of each is found, and expired ones are swept, without a scan.
    Room is made first at the expense of the client address holding the most connections:
    a flood from one address cannot push out, however fast it reconnects, a Prometheus that
    connects from another.
    """

    def __init__(self, limits: ConnectionLimits, tls: TLSSource | None) -> None:
        self.limits = limits
        self.tls = tls
        self._refused_clients = 0
        self._refused_logged = -REFUSED_CLIENT_LOG_SECONDS
        self._by_transport: dict[asyncio.BaseTransport, _Connection] = {}
        self._heads: OrderedDict[_Connection, None] = OrderedDict()
        self._idle: OrderedDict[_Connection, None] = OrderedDict()
        # Per client address: its connections, and those of them waiting or idle, oldest first.
        self._per_peer: Counter[str] = Counter()
        self._evictable: dict[str, OrderedDict[_Connection, None]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._at_bound = False
        self._evicted = 0
        self._refused = 0
        self._expired = 0

    @property
    def connections(self) -> int:
        """Return the connections open now."""
        return len(self._by_transport)

    def protocol_factory(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        """Return the protocol factory for loop.create_server, wrapping aiohttp's."""

        def make() -> asyncio.Protocol:
            return _Connection(self, server())

        return make

    def start(self) -> None:
        """Start the periodic sweep of slow and idle connections."""
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep)

    def stop(self) -> None:
        """Stop sweeping."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    # --------------------------------------------------------------- state changes

    def opened(self, connection: _Connection) -> None:
        assert connection.transport is not None
        self._by_transport[connection.transport] = connection
        self._per_peer[connection.peer] += 1
        self._wait_for_head(connection)
        if self.connections > self.limits.max_connections:
            self._make_room(connection)

    def secured(
        self, connection: _Connection, raw: asyncio.Transport, secure: asyncio.Transport
    ) -> None:
        """Follow a connection from its TCP transport to its TLS one (what requests carry)."""
        if self._by_transport.pop(raw, None) is not None:
            self._by_transport[secure] = connection

    def refused_client(self, connection: _Connection) -> None:
        """Forget a client whose certificate names none of client_allowed_sans; log it."""
        self.forget(connection)
        self._refused_clients += 1
        now = asyncio.get_running_loop().time()
        if now - self._refused_logged >= REFUSED_CLIENT_LOG_SECONDS:
            log.warning(
                "TLS client %s refused: its certificate names none of client_allowed_sans"
                " (%d such connections since the last such line)",
                connection.peer,
                self._refused_clients,
            )
            self._refused_logged = now
            self._refused_clients = 0

    def head_started(self, connection: _Connection) -> None:
        self._idle.pop(connection, None)
        self._wait_for_head(connection)

    def forget(self, connection: _Connection) -> None:
        if connection.transport is None or connection.transport not in self._by_transport:
            return
        del self._by_transport[connection.transport]
        self._per_peer[connection.peer] -= 1
        if self._per_peer[connection.peer] <= 0:
            del self._per_peer[connection.peer]
        self._not_evictable(connection)
        if self._at_bound and self.connections < CALM_SHARE * self.limits.max_connections:
            self._calm()

    def _wait_for_head(self, connection: _Connection) -> None:
        connection.state = _Connection.HEAD
        connection.since = asyncio.get_running_loop().time()
        self._heads[connection] = None
        mine = self._evictable.setdefault(connection.peer, OrderedDict())
        mine.pop(connection, None)
        mine[connection] = None  # the newest of its address's now

    def _not_evictable(self, connection: _Connection) -> None:
        self._heads.pop(connection, None)
        self._idle.pop(connection, None)
        mine = self._evictable.get(connection.peer)
        if mine is not None:
            mine.pop(connection, None)
            if not mine:
                del self._evictable[connection.peer]

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Mark the connection busy while its request is handled (so it is never evicted)."""
        transport = request.transport
        connection = self._by_transport.get(transport) if transport is not None else None
        if connection is None:
            return await handler(request)
        self._not_evictable(connection)
        connection.state = _Connection.BUSY
        try:
            return await handler(request)
        finally:
            if not connection.closed and connection.transport in self._by_transport:
                connection.state = _Connection.IDLE
                connection.since = asyncio.get_running_loop().time()
                self._idle[connection] = None
                self._evictable.setdefault(connection.peer, OrderedDict())[connection] = None

    # --------------------------------------------------------------- the bounds

    def _close(self, connection: _Connection) -> None:
        self.forget(connection)
        connection.close()

    def _make_room(self, newcomer: _Connection) -> None:
        """Close a slow or idle connection, the newcomer itself only if all others are busy.

        The victim is the oldest waiting or idle connection of the address that holds the
        most connections; failing that, the oldest one waiting for its head, then the oldest
        idle one.
        """
        heaviest = max(self._per_peer, key=self._per_peer.__getitem__)
        mine = self._evictable.get(heaviest)
        victim = next((c for c in mine if c is not newcomer), None) if mine else None
        if victim is None:
            victim = next((c for c in self._heads if c is not newcomer), None)
        if victim is None:
            victim = next(iter(self._idle), None)
        if victim is None:
            self._refused += 1
            victim = newcomer
        else:
            self._evicted += 1
        if not self._at_bound:
            self._at_bound = True
            log.warning(
                "HTTP connection limit reached (%d connections, http_max_connections):"
                " closing slow or idle connections to make room, of the busiest address first",
                self.limits.max_connections,
            )
        self._close(victim)

    def _calm(self) -> None:
        self._at_bound = False
        log.warning(
            "HTTP connections back under the limit: %d slow or idle closed to make room,"
            " %d refused while every connection was busy",
            self._evicted,
            self._refused,
        )
        self._evicted = self._refused = 0

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for queue, timeout in (
            (self._heads, self.limits.request_head_timeout),
            (self._idle, self.limits.idle_timeout),
        ):
            while queue:
                oldest = next(iter(queue))
                if now - oldest.since < timeout:
                    break
                self._expired += 1
                self._close(oldest)
        self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep)


class _MalformedRequests(logging.Filter):
    """Drop aiohttp's ERROR with traceback for each request that does not parse.

    Such a request is the client's fault and is answered 400 (and written in the access log);
    the traceback would let any client fill the log, and it quotes the request line, which may
    hold a DSN with a password in /probe?target=.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, HttpProcessingError)


# aiohttp's server messages go through this logger, which never shows malformed requests.
server_log = logging.getLogger("exporter.http")
server_log.addFilter(_MalformedRequests())


class _AcceptFailures:
    """The loop's exception handler: one line a minute for failed accepts, no traceback."""

    def __init__(self) -> None:
        self._last = -ACCEPT_FAILED_LOG_SECONDS
        self._count = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != ACCEPT_FAILED:
            loop.default_exception_handler(context)
            return
        self._count += 1
        now = loop.time()
        if now - self._last >= ACCEPT_FAILED_LOG_SECONDS:
            error = context.get("exception")
            reason = getattr(error, "strerror", None) or str(error)
            log.warning(
                "cannot accept HTTP connections: %s (%d times since the last such line);"
                " see http_max_connections and the open-file limit",
                reason,
                self._count,
            )
            self._last = now
            self._count = 0


#: The first file descriptor systemd passes (SD_LISTEN_FDS_START).
SYSTEMD_FIRST_FD = 3


def systemd_sockets() -> list[socket.socket]:
    """Return the listening sockets systemd passed (socket activation); raise ExporterError.

    The protocol of sd_listen_fds(3): LISTEN_PID names this process, LISTEN_FDS counts the
    descriptors from 3. The variables are removed, so nothing started later takes them.
    """
    pid, count = os.environ.pop("LISTEN_PID", ""), os.environ.pop("LISTEN_FDS", "")
    os.environ.pop("LISTEN_FDNAMES", None)
    # ASCII digits, few of them: int() refuses '²' and numbers of thousands of digits.
    count_ok = count.isascii() and count.isdigit() and len(count) < 6 and int(count) >= 1
    pid_ok = not (pid.isascii() and pid.isdigit()) or (len(pid) < 12 and int(pid) == os.getpid())
    if not count_ok or not pid_ok:
        raise ExporterError(
            "--web.systemd-socket: no socket passed by systemd (LISTEN_FDS/LISTEN_PID unset or"
            " for another process); start it from a .socket unit"
        )
    sockets = []
    for fd in range(SYSTEMD_FIRST_FD, SYSTEMD_FIRST_FD + int(count)):
        try:
            passed = socket.socket(fileno=fd)
        except OSError as exc:
            raise ExporterError(f"--web.systemd-socket: descriptor {fd}: {exc.strerror}") from None
        if passed.type != socket.SOCK_STREAM:
            raise ExporterError(f"--web.systemd-socket: descriptor {fd} is not a stream socket")
        sockets.append(passed)
    return sockets


def every_interface(port: int) -> socket.socket:
    """Return a socket listening on `port` of every interface, IPv6 and IPv4 alike.

    As Go's ":PORT": one dual-stack socket where the host has IPv6 (an IPv6-only cluster
    reaches it too), else IPv4 alone. asyncio's own binding of an empty host would make
    IPv6 sockets IPv6-only.
    """
    try:
        listening = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if listening.family == socket.AF_INET6:
            listening.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            try:
                listening.bind(("::", port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise
                # IPv6 present but unusable here (disabled on the host): IPv4 alone.
                listening.close()
                listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listening.bind(("0.0.0.0", port))
        else:
            listening.bind(("0.0.0.0", port))
        listening.listen(BACKLOG)
    except BaseException:
        listening.close()
        raise
    listening.setblocking(False)
    return listening


def _bind_failure(exc: OSError) -> str:
    """Say why a listening socket could not be made, the same on every Python.

    A name that does not resolve is a gaierror: its errno is getaddrinfo's. From Python 3.12,
    asyncio skips an address it cannot assign (EADDRNOTAVAIL, taken for a family the host
    lacks) and, with none left, raises an OSError without an errno: it is that error.
    """
    if exc.errno and exc.errno > 0:
        return os.strerror(exc.errno)
    if exc.errno is None and str(exc).startswith("could not bind on any address"):
        return os.strerror(errno.EADDRNOTAVAIL)
    return exc.strerror or str(exc)


def _where(listening: socket.socket) -> str:
    """Say where a socket listens: HOST:PORT, or a Unix socket's path (@NAME if abstract).

    >>> with socket.socket(socket.AF_UNIX) as unix:
    ...     unix.bind(b"\\0pghe-doctest")
    ...     _where(unix)
    'unix:@pghe-doctest'
    """
    address = listening.getsockname()
    if listening.family == socket.AF_UNIX:
        name = address.decode(errors="replace") if isinstance(address, bytes) else str(address)
        return "unix:" + ("@" + name[1:] if name.startswith("\0") else name)
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve_forever(
    app: web.Application,
    *,
    endpoints: Sequence[tuple[str, int]] = (),
    sockets: Sequence[socket.socket] = (),
    tls: TLSSource | None,
    limits: ConnectionLimits,
    metrics_path: str = "/metrics",
) -> None:
    """Serve the application until SIGTERM or SIGINT; raise ExporterError if it cannot listen.

    It listens on every HOST:PORT of `endpoints` and on every socket of `sockets` (from
    systemd), all with the same bounds. `tls`, if given, is asked for the TLS of each new
    connection (see webconfig.LiveWebConfig).
    """
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_AcceptFailures())
    gate = ConnectionGate(limits, tls)
    app.middlewares.insert(0, gate.middleware)
    runner = web.AppRunner(
        app, handle_signals=False, keepalive_timeout=limits.idle_timeout, logger=server_log
    )
    await runner.setup()
    stop = asyncio.Event()
    try:
        assert runner.server is not None
        servers: list[asyncio.Server] = []
        try:
            for host, port in endpoints:
                try:
                    if host:
                        server = await loop.create_server(
                            gate.protocol_factory(runner.server),
                            host,
                            port,
                            reuse_address=True,
                            backlog=BACKLOG,
                        )
                    else:
                        server = await loop.create_server(
                            gate.protocol_factory(runner.server), sock=every_interface(port)
                        )
                    servers.append(server)
                except OSError as exc:
                    # A name that does not resolve is a gaierror: its errno is getaddrinfo's.
                    reason = _bind_failure(exc)
                    raise ExporterError(
                        f"cannot listen on {host}:{port}: {reason.lower()}"
                    ) from None
            for listening in sockets:
                servers.append(
                    await loop.create_server(gate.protocol_factory(runner.server), sock=listening)
                )
            scheme = "https" if tls else "http"
            for server in servers:
                for listening in server.sockets:
                    log.info("serving on %s://%s%s", scheme, _where(listening), metrics_path)
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            gate.start()
            try:
                await stop.wait()
            finally:
                gate.stop()
        finally:
            for server in servers:
                server.close()
    finally:
        await runner.cleanup()
