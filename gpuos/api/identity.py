"""Who is calling: the caller's uid on the Unix socket, read with SO_PEERCRED.

grpcio offers no access to a connection's socket, so gpuosd accepts Unix-socket connections
itself, reads the peer's uid, and relays the bytes to the gRPC server over a private socket
from a client socket bound to an abstract name that carries the uid. The gRPC server then reads
the uid back from ``context.peer()``. Only the daemon can reach the private socket (its
directory is mode 0700), so the name cannot be forged.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import secrets
import socket
import struct
import threading
from dataclasses import dataclass

log = logging.getLogger("gpuos.identity")

_UCRED = struct.Struct("3i")


@dataclass(frozen=True)
class Identity:
    uid: int
    name: str
    admin: bool

    def may_see(self, tenant: str) -> bool:
        return self.admin or tenant == self.name


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


class PeerGateway:
    """Accepts connections on the public Unix socket and relays each, tagged with its uid."""

    def __init__(self, public_path: str, private_path: str, mode: int) -> None:
        self.public_path = public_path
        self.private_path = private_path
        self.nonce = secrets.token_hex(4)
        self._peer = re.compile(rf"^unix-abstract:gpuos-{self.nonce}-uid(\d+)-")
        self._counter = 0
        self._stopped = False
        os.makedirs(os.path.dirname(public_path) or ".", exist_ok=True)
        if os.path.exists(public_path):
            self._remove_stale(public_path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(public_path)
        os.chmod(public_path, mode)
        self._listener.listen(512)
        self._thread = threading.Thread(target=self._accept_loop, name="gpuos-gateway", daemon=True)

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
        self._stopped = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        try:
            os.unlink(self.public_path)
        except FileNotFoundError:
            pass

    def uid_of_peer(self, peer: str) -> int | None:
        """The uid encoded in a relayed connection's peer string; None for other peers."""
        match = self._peer.match(peer)
        return int(match.group(1)) if match else None

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                if self._stopped:
                    return
                continue
            try:
                _pid, uid, _gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
                upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._counter += 1
                upstream.bind(f"\0gpuos-{self.nonce}-uid{uid}-{self._counter}-{secrets.token_hex(4)}")
                upstream.connect(self.private_path)
            except OSError as exc:
                log.warning("dropping a connection: %s", exc)
                conn.close()
                continue
            _Relay(conn, upstream).start()


class _Relay:
    """Copies bytes both ways between a client and the gRPC server; closes both when both ends are done."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self._sockets = (client, upstream)
        self._lock = threading.Lock()
        self._open_directions = 2

    def start(self) -> None:
        client, upstream = self._sockets
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True, name="gpuos-relay").start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        with self._lock:
            self._open_directions -= 1
            last = self._open_directions == 0
        if last:
            for s in self._sockets:
                s.close()
