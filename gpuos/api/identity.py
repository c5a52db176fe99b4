"""Who is calling, and who may connect at all.

On the Unix socket the caller is the peer's uid, read with SO_PEERCRED. grpcio offers no access to
a connection's socket, so gpuosd accepts Unix-socket connections itself (:class:`PeerGateway`),
reads the peer's uid, and relays the bytes to the gRPC server over a private socket from a client
socket bound to an abstract name that carries the uid. The gRPC server reads the uid back from
``context.peer()``. Only the daemon's user can reach the private socket (its directory is mode
0700), so the name cannot be forged.

On TCP the caller is the subject common name of its client certificate (mutual TLS), the tenant
its bearer token maps to (a token file), or ``tcp_tenant`` (``insecure_tcp``); see
:class:`Authenticator`.
"""

from __future__ import annotations

import errno
import hmac
import logging
import os
import pwd
import re
import secrets
import selectors
import socket
import stat
import struct
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

from gpuos.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unauthenticated

log = logging.getLogger("gpuos.identity")

_UCRED = struct.Struct("3i")
NOBODY_UID = 65534
# Tokens shorter than this are guessable; the token file is refused at start.
MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class Identity:
    uid: int
    name: str
    admin: bool

    def may_see(self, tenant: str) -> bool:
        return self.admin or tenant == self.name


# uid -> (name, when looked up). getpwuid reads the password database (a file, or a directory
# service) on every call, and every RPC needs its caller's name; accounts rarely change.
_NAMES: dict[int, tuple[str, float]] = {}
NAME_TTL_SECONDS = 30.0


def user_name(uid: int) -> str:
    now = time.monotonic()
    cached = _NAMES.get(uid)
    if cached is not None and now - cached[1] < NAME_TTL_SECONDS:
        return cached[0]
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid{uid}"
    if len(_NAMES) > 4096:
        _NAMES.clear()
    _NAMES[uid] = (name, now)
    return name


class Throttle:
    """Says whether a log line about ``key`` may be written now: at most one per ``every`` seconds.

    Used where a flood of bad connections would otherwise flood the log too.
    """

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = defaultdict(int)

    def __call__(self, key: str) -> int | None:
        """None: stay quiet; else the number of lines suppressed since the last one."""
        now = time.monotonic()
        if now - self._last.get(key, -self.every) < self.every:
            self._suppressed[key] += 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)


# -- TCP credentials ----------------------------------------------------------------------------


def load_tokens(path: str) -> dict[str, str]:
    """The token file's TOKEN -> TENANT pairs.

    The file must belong to the daemon's user and be readable by nobody else (mode 0600 or
    stricter): anyone who can read it can act as every tenant in it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise InvalidArgument("token_file", f"{path} does not exist") from None
    except OSError as exc:
        raise InvalidArgument("token_file", f"{path} cannot be opened: {exc.strerror}") from None
    with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InvalidArgument("token_file", f"{path} is not a regular file")
        if info.st_uid != os.geteuid():
            raise InvalidArgument("token_file", f"{path} belongs to {user_name(info.st_uid)}, not to gpuosd's user "
                                                f"{user_name(os.geteuid())}; chown it")
        if info.st_mode & 0o077:
            raise InvalidArgument("token_file", f"{path} has mode {stat.S_IMODE(info.st_mode):04o}; others may read "
                                                "it: chmod 600 it")
        text = f.read()
    tokens: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise InvalidArgument("token_file", f"{path} line {number}: expected \"TOKEN TENANT\"")
        token, tenant = parts
        if len(token) < MIN_TOKEN_CHARS:
            raise InvalidArgument("token_file", f"{path} line {number}: a token has at least {MIN_TOKEN_CHARS} "
                                                "characters (e.g. `openssl rand -hex 32`)")
        if len(tenant) > 64 or not tenant.isprintable():
            raise InvalidArgument("token_file", f"{path} line {number}: a tenant is at most 64 printable characters")
        if token in tokens:
            raise InvalidArgument("token_file", f"{path} line {number}: the same token is listed twice")
        tokens[token] = tenant
    if not tokens:
        raise InvalidArgument("token_file", f"{path} lists no tokens")
    return tokens


class Authenticator:
    """Maps what gRPC knows about a caller (peer, TLS common name, bearer token) to an Identity."""

    def __init__(self, *, admins: list[str], tcp_auth: str, tcp_tenant: str, tokens: dict[str, str] | None = None,
                 allow_other_users: bool = False) -> None:
        self.admins = set(admins)
        self.tcp_auth = tcp_auth
        self.tcp_tenant = tcp_tenant
        self._tokens = list((tokens or {}).items())
        self.allow_other_users = allow_other_users
        self.daemon_uid = os.getuid()
        self.gateway: PeerGateway | None = None

    def identify(self, peer: str, common_name: str | None, bearer: str | None) -> Identity:
        """The caller of an RPC; PermissionDenied or Unauthenticated when it may not call at all."""
        uid = self.gateway.uid_of_peer(peer) if self.gateway is not None else None
        if uid is None and peer.startswith("unix:"):
            # Only the daemon's own user can reach the private socket directly.
            uid = self.daemon_uid
        if uid is not None:
            return self._local(uid)
        if peer.startswith(("ipv4:", "ipv6:")):
            return self._remote(self._tcp_tenant(common_name, bearer))
        raise PermissionDenied(f"cannot identify the caller ({peer[:100]}); connect through the Unix socket")

    def _local(self, uid: int) -> Identity:
        name = user_name(uid)
        daemon_uid = self.daemon_uid
        # Root may read the state dir anyway, so refusing it would protect nothing: root is an
        # admin of every gpuosd, whichever user runs it.
        if daemon_uid != 0 and uid not in (0, daemon_uid) and not self.allow_other_users:
            owner = user_name(daemon_uid)
            raise PermissionDenied(
                f"gpuosd runs as user {owner} without root, so it serves only {owner}; an admin may set "
                f"allow_other_users = true, and jobs then run as {owner}"
            )
        admin = uid == 0 or uid == daemon_uid or name in self.admins or str(uid) in self.admins
        return Identity(uid, name, admin)

    def _remote(self, tenant: str) -> Identity:
        # TCP tenants have no local account: their jobs run as nobody under a root daemon.
        return Identity(NOBODY_UID, tenant, tenant in self.admins)

    def _tcp_tenant(self, common_name: str | None, bearer: str | None) -> str:
        if self.tcp_auth == "mtls":
            if not common_name:
                raise Unauthenticated("the client certificate has no subject common name to act as a tenant")
            if len(common_name) > 64 or not common_name.isprintable():
                raise Unauthenticated("the client certificate's common name is not a tenant name "
                                      "(at most 64 printable characters)")
            return common_name
        if self.tcp_auth == "token":
            if not bearer:
                raise Unauthenticated("send a bearer token (metadata `authorization: Bearer TOKEN`; "
                                      "gpuosctl --token-file)")
            tenant = None
            for token, owner in self._tokens:
                # Every token is compared, in constant time each, so timing tells nothing.
                if hmac.compare_digest(token.encode(), bearer.encode()):
                    tenant = owner
            if tenant is None:
                raise Unauthenticated("the bearer token is not valid")
            return tenant
        if self.tcp_auth == "insecure":
            return self.tcp_tenant
        raise PermissionDenied("this gpuosd does not serve TCP callers")


def check_tcp_auth(listen: str, tcp_auth: str) -> None:
    """A TCP listener without a way to authenticate callers is refused at start."""
    if listen and not tcp_auth:
        raise FailedPrecondition(
            f"--listen {listen[:100]} needs authentication: set tls_cert, tls_key and tls_ca (mutual TLS), "
            "or token_file (bearer tokens), or insecure_tcp = true to serve without it"
        )


# -- the Unix-socket gateway --------------------------------------------------------------------

# Bytes buffered per direction of a connection before the relay stops reading its source.
_BUFFER = 256 << 10
_RECV = 64 << 10
# How long the listener rests after the process ran out of file descriptors.
FD_BACKOFF_SECONDS = 0.1
_FD_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class _Side:
    """One socket of a relayed connection and the bytes waiting to be written to it."""

    __slots__ = ("sock", "outbox", "eof", "shut", "mask", "peer", "connection")

    def __init__(self, sock: socket.socket, connection: _Connection) -> None:
        self.sock = sock
        self.connection = connection
        self.outbox = bytearray()
        self.eof = False  # no more bytes will come from this socket
        self.shut = False  # this socket's write side is shut down
        self.mask = 0  # events registered with the selector
        self.peer: _Side = self


class _Connection:
    __slots__ = ("uid", "client", "upstream", "closed")

    def __init__(self, uid: int, client: socket.socket, upstream: socket.socket) -> None:
        self.uid = uid
        self.client = _Side(client, self)
        self.upstream = _Side(upstream, self)
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.closed = False


class PeerGateway:
    """Accepts connections on the public Unix socket and relays each, tagged with its uid.

    One thread serves every connection with non-blocking sockets and an epoll loop, so a
    connection costs two file descriptors and two buffers, not threads. A uid with
    ``max_per_uid`` connections open has further ones closed at once; when the process runs out
    of file descriptors the listener rests briefly instead of spinning on a connection it cannot
    accept.
    """

    def __init__(self, public_path: str, private_path: str, mode: int, max_per_uid: int = 256) -> None:
        self.public_path = public_path
        self.private_path = private_path
        self.max_per_uid = max_per_uid
        self.nonce = secrets.token_hex(4)
        self._peer = re.compile(rf"^unix-abstract:gpuos-{self.nonce}-uid(\d+)-")
        self._counter = 0
        self._open: dict[int, int] = defaultdict(int)
        self._connections: set[_Connection] = set()
        self._throttle = Throttle()
        self._selector = selectors.DefaultSelector()
        self._accepting = True
        self._listening = True
        self._resume_at = 0.0
        self._closing = False
        self._stopped_accepting = threading.Event()
        os.makedirs(os.path.dirname(public_path) or ".", exist_ok=True)
        if os.path.exists(public_path):
            self._remove_stale(public_path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(public_path)
        os.chmod(public_path, mode)
        self._listener.listen(1024)
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._loop, name="gpuos-gateway", daemon=True)

    @staticmethod
    def _remove_stale(path: str) -> None:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: left over from a crash
            return
        finally:
            probe.close()
        raise OSError(f"{path} is in use: is another gpuosd running?")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting connections and remove the socket file; open connections keep relaying."""
        self._accepting = False
        self._wake()
        if self._thread.is_alive():
            self._stopped_accepting.wait(5.0)
        else:
            self._close_listener()

    def close(self) -> None:
        """Stop relaying and close every connection (after the gRPC server has stopped)."""
        self.stop()
        self._closing = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def connections(self, uid: int) -> int:
        """How many connections ``uid`` has open through the gateway."""
        return self._open.get(uid, 0)

    def uid_of_peer(self, peer: str) -> int | None:
        """The uid encoded in a relayed connection's peer string; None for other peers."""
        match = self._peer.match(peer)
        return int(match.group(1)) if match else None

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # already awake (buffer full) or closed

    # -- the loop (gateway thread only) ---------------------------------------------------------

    def _loop(self) -> None:
        try:
            while not self._closing:
                if not self._accepting and self._listening:
                    self._close_listener()
                timeout = None
                if self._listening and self._resume_at:
                    timeout = self._resume_at - time.monotonic()
                    if timeout <= 0:
                        self._resume_at = 0.0
                        self._selector.register(self._listener, selectors.EVENT_READ, None)
                        timeout = None
                for key, events in self._selector.select(timeout):
                    if key.fileobj is self._wake_r:
                        self._drain_wake()
                    elif key.fileobj is self._listener:
                        self._accept()
                    else:
                        side: _Side = key.data
                        self._ready(side, events)
        except Exception:  # noqa: BLE001 - the gateway must not die silently
            log.exception("the Unix-socket gateway failed; no new connections are served")
        finally:
            self._shutdown_all()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _close_listener(self) -> None:
        if not self._listening:
            return
        self._listening = False
        if not self._resume_at:
            self._selector.unregister(self._listener)
        self._resume_at = 0.0
        self._listener.close()
        try:
            os.unlink(self.public_path)
        except FileNotFoundError:
            pass
        self._stopped_accepting.set()

    def _back_off(self, what: str, exc: OSError) -> None:
        """Out of file descriptors: rest the listener instead of spinning on what it cannot accept."""
        if not self._resume_at:
            self._selector.unregister(self._listener)
        self._resume_at = time.monotonic() + FD_BACKOFF_SECONDS
        suppressed = self._throttle("fds")
        if suppressed is not None:
            log.warning("%s: %s; not accepting connections for %.0f ms%s", what, exc.strerror,
                        FD_BACKOFF_SECONDS * 1000, f" ({suppressed} more since the last warning)" if suppressed else "")

    def _accept(self) -> None:
        for _ in range(64):  # a bounded batch, so open connections are served between batches
            try:
                conn, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _FD_ERRORS:
                    self._back_off("cannot accept a connection", exc)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EINTR, errno.EPROTO):
                    continue
                raise
            self._admit(conn)
            if self._resume_at:
                return

    def _admit(self, conn: socket.socket) -> None:
        try:
            _pid, uid, _gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        except OSError:
            conn.close()
            return
        if self._open[uid] >= self.max_per_uid:
            conn.close()
            suppressed = self._throttle(f"uid{uid}")
            if suppressed is not None:
                log.warning("closed a connection of %s: it has %d open, the most max_connections_per_uid allows%s",
                            user_name(uid), self.max_per_uid,
                            f" ({suppressed} more since the last warning)" if suppressed else "")
            return
        try:
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:
            conn.close()
            if exc.errno in _FD_ERRORS:
                self._back_off("cannot open a connection to the gRPC server", exc)
                return
            raise
        try:
            self._counter += 1
            upstream.bind(f"\0gpuos-{self.nonce}-uid{uid}-{self._counter}-{secrets.token_hex(4)}")
            upstream.setblocking(False)
            # A local connect completes at once unless the server's backlog is full (EAGAIN).
            upstream.connect(self.private_path)
        except OSError as exc:
            conn.close()
            upstream.close()
            suppressed = self._throttle("upstream")
            if suppressed is not None:
                log.warning("dropping a connection: cannot reach the gRPC server: %s", exc)
            return
        conn.setblocking(False)
        connection = _Connection(uid, conn, upstream)
        self._connections.add(connection)
        self._open[uid] += 1
        for side in (connection.client, connection.upstream):
            self._update(side, connection)

    def _ready(self, side: _Side, events: int) -> None:
        connection = side.connection
        if connection.closed:
            return
        try:
            if events & selectors.EVENT_WRITE:
                self._flush(side)
            if events & selectors.EVENT_READ:
                self._read(side)
        except OSError:
            self._close(connection)  # reset or broken pipe: the connection is over
            return
        if connection.client.eof or (side.eof and side.peer.eof and not side.outbox and not side.peer.outbox):
            # A gRPC client never half-closes: once it is gone nobody reads an answer, and waiting
            # for the server's side to finish would pin both descriptors forever when the server
            # never accepted the upstream (out of descriptors itself). The bytes it sent were
            # flushed upstream as far as the server took them.
            self._close(connection)
            return
        self._update(connection.client, connection)
        self._update(connection.upstream, connection)

    def _read(self, side: _Side) -> None:
        peer = side.peer
        while len(peer.outbox) < _BUFFER:
            try:
                data = side.sock.recv(_RECV)
            except BlockingIOError:
                break
            if not data:
                side.eof = True
                break
            peer.outbox += data
        self._flush(peer)

    def _flush(self, side: _Side) -> None:
        while side.outbox:
            try:
                sent = side.sock.send(side.outbox)
            except BlockingIOError:
                return
            del side.outbox[:sent]
        if side.peer.eof and not side.shut:
            side.shut = True
            side.sock.shutdown(socket.SHUT_WR)

    def _update(self, side: _Side, connection: _Connection) -> None:
        """Register the events ``side`` waits for: reads while its peer has room, writes while it has bytes."""
        if connection.closed:
            return
        mask = 0
        if not side.eof and len(side.peer.outbox) < _BUFFER:
            mask |= selectors.EVENT_READ
        if side.outbox:
            mask |= selectors.EVENT_WRITE
        if mask == side.mask:
            return
        if side.mask == 0:
            self._selector.register(side.sock, mask, side)
        elif mask == 0:
            self._selector.unregister(side.sock)
        else:
            self._selector.modify(side.sock, mask, side)
        side.mask = mask

    def _close(self, connection: _Connection) -> None:
        if connection.closed:
            return
        connection.closed = True
        for side in (connection.client, connection.upstream):
            if side.mask:
                self._selector.unregister(side.sock)
                side.mask = 0
            side.sock.close()
        self._connections.discard(connection)
        self._open[connection.uid] -= 1
        if self._open[connection.uid] <= 0:
            del self._open[connection.uid]

    def _shutdown_all(self) -> None:
        for connection in list(self._connections):
            self._close(connection)
        self._close_listener()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        self._stopped_accepting.set()
