"""gpuosd's configuration: built-in defaults, then a TOML file, then command-line flags.

Every value is checked against its field's type when it is loaded, so a mistyped setting
(``kill_grace_seconds = "5"``) stops gpuosd at start with one line naming the key, instead of
breaking something much later.
"""

from __future__ import annotations

import os
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gpuos.errors import InvalidArgument
from gpuos.text import quote

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def default_socket() -> str:
    """``$GPUOS_SOCKET``, else ``$XDG_RUNTIME_DIR/gpuos.sock``, else ``/run/gpuos/gpuos.sock``."""
    if os.environ.get("GPUOS_SOCKET"):
        return os.environ["GPUOS_SOCKET"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "gpuos.sock")
    return "/run/gpuos/gpuos.sock"


def default_state_dir() -> str:
    if os.getuid() == 0:
        return "/var/lib/gpuos"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "gpuos")


@dataclass
class DaemonConfig:
    socket: str = field(default_factory=default_socket)
    # Optional TCP address (HOST:PORT). It needs mutual TLS (tls_*) or bearer tokens (token_file),
    # unless insecure_tcp is set.
    listen: str = ""
    state_dir: str = field(default_factory=default_state_dir)
    backend: str = "auto"
    sim_gpus: str = "2xH100-80GB"
    # Empty: the policy active before the last stop, else fifo.
    policy: str = ""
    # User names (or numeric uids) allowed to see and cancel every tenant's jobs and to set policy.
    admins: list[str] = field(default_factory=list)
    # The tenant of unauthenticated TCP callers (insecure_tcp only).
    tcp_tenant: str = "remote"
    # Permissions of the Unix socket file; -1: 0666 for a root gpuosd (every caller is checked
    # by uid) or one with allow_other_users, else 0600, owner-only, since it serves no one else.
    socket_mode: int = -1
    # A gpuosd not running as root cannot run jobs as other users. By default it serves only its
    # own user; true lets other users in, and their jobs then run as the daemon's user.
    allow_other_users: bool = False
    # Seconds between SIGTERM and SIGKILL when a job is cancelled or preempted.
    kill_grace_seconds: float = 5.0
    log_level: str = "INFO"
    # Prometheus endpoint (HOST:PORT); empty: none.
    metrics_listen: str = ""

    # -- TCP authentication ---------------------------------------------------------------------
    # Mutual TLS: the server's certificate and key, and the CA that signs client certificates;
    # a client's tenant is its certificate's subject common name.
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    # Bearer tokens: a mode-0600 file with one "TOKEN TENANT" pair a line.
    token_file: str = ""
    # Serve TCP without authentication (callers act as tcp_tenant); a warning says so at start.
    insecure_tcp: bool = False

    # -- fairness between tenants ---------------------------------------------------------------
    # Open Watch/Logs streams per tenant; the next one is refused with RESOURCE_EXHAUSTED.
    max_streams_per_tenant: int = 1024
    # While other tenants are calling, one tenant's Watch/Logs streams together send at most this
    # many messages a second (0: no limit); alone, a tenant's streams are never slowed.
    contended_stream_messages_per_second: float = 500.0
    # Open Unix-socket connections per uid; further connections are closed at once.
    max_connections_per_uid: int = 256
    # Jobs a tenant may have waiting (PENDING); the next submit is refused with RESOURCE_EXHAUSTED.
    max_pending_per_tenant: int = 10000

    # -- history --------------------------------------------------------------------------------
    # Finished jobs (with their logs) are purged once older than this many seconds (0: never) ...
    retention_seconds: float = 7 * 24 * 3600.0
    # ... or when more than this many finished jobs are kept (0: no limit); the oldest go first.
    retention_jobs: int = 100000
    # A dedupe key matches a job that succeeded at most this many seconds ago (and is not purged).
    dedupe_retention_seconds: float = 24 * 3600.0

    # -- devices --------------------------------------------------------------------------------
    # A GPU is marked lost only after this many consecutive failed health samples.
    health_failures_before_lost: int = 3
    # Where jobs can be suspended to host memory (``gpuosctl devices`` says), a time-shared GPU
    # admits sharers whose memory limits add up to this many times its memory: what must fit is
    # the resident set, and paused sharers are suspended to make room for the one whose turn it
    # is. 1.0 turns oversubscription off; at most 8 (MAX_TIMESLICE_JOBS sharers of one GPU each).
    memory_oversubscription: float = 2.0

    @classmethod
    def load(cls, path: str | None, overrides: dict[str, Any]) -> DaemonConfig:
        """Defaults, then the TOML file at ``path``, then non-None ``overrides`` (the flags)."""
        values: dict[str, Any] = {}
        if path:
            try:
                with open(path, "rb") as f:
                    values.update(tomllib.load(f))
            except FileNotFoundError:
                raise InvalidArgument("config", f"{path} does not exist") from None
            except IsADirectoryError:
                raise InvalidArgument("config", f"{path} is a directory, not a TOML file") from None
            except PermissionError:
                raise InvalidArgument("config", f"{path} cannot be read (permission denied)") from None
            except tomllib.TOMLDecodeError as exc:
                raise InvalidArgument("config", f"{path} is not valid TOML: {exc}") from None
            except UnicodeDecodeError:
                raise InvalidArgument("config", f"{path} is not UTF-8 text") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InvalidArgument("config", f"unknown setting {unknown[0]!r}; settings are {', '.join(known)}")
        hints = typing.get_type_hints(cls)
        checked = {name: _typed(name, value, hints[name]) for name, value in values.items()}
        config = cls(**checked)
        config.validate()
        return config

    def validate(self) -> None:
        if self.backend not in ("auto", "sim", "nvml"):
            raise InvalidArgument("backend", f"{self.backend!r} is not one of auto, sim, nvml")
        if not self.socket:
            raise InvalidArgument("socket", "is empty; give the Unix socket's path")
        if len(os.fsencode(self.socket)) > 107:
            raise InvalidArgument("socket", f"{self.socket[:120]!r} is longer than a Unix socket path may be (107 bytes)")
        if not self.state_dir:
            raise InvalidArgument("state_dir", "is empty; give a directory for the job store")
        for name in ("listen", "metrics_listen"):
            value = getattr(self, name)
            if value and (":" not in value or not value.rsplit(":", 1)[1].isdigit()
                          or not 0 <= int(value.rsplit(":", 1)[1]) <= 65535):
                raise InvalidArgument(name, f"{value[:120]!r} is not HOST:PORT")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise InvalidArgument("log_level", f"{self.log_level[:40]!r} is not one of DEBUG, INFO, WARNING, ERROR")
        if not (0 <= self.socket_mode <= 0o777 or self.socket_mode == -1):
            raise InvalidArgument("socket_mode", f"{self.socket_mode} is not a file mode; write it in octal, "
                                                 "as 0o666 or \"0666\"")
        self.admins = [str(a) for a in self.admins]
        tls = [n for n in ("tls_cert", "tls_key", "tls_ca") if getattr(self, n)]
        if tls and len(tls) != 3:
            missing = sorted({"tls_cert", "tls_key", "tls_ca"} - set(tls))
            raise InvalidArgument(missing[0], "mutual TLS needs tls_cert, tls_key and tls_ca together")
        for name in ("kill_grace_seconds", "retention_seconds", "contended_stream_messages_per_second",
                     "dedupe_retention_seconds"):
            if getattr(self, name) < 0:
                raise InvalidArgument(name, f"{getattr(self, name)} is negative")
        for name in ("max_streams_per_tenant", "max_connections_per_uid", "max_pending_per_tenant",
                     "health_failures_before_lost"):
            if getattr(self, name) < 1:
                raise InvalidArgument(name, f"{getattr(self, name)} is below 1")
        if not 1.0 <= self.memory_oversubscription <= 8.0:
            raise InvalidArgument("memory_oversubscription", f"{self.memory_oversubscription} is not between 1 "
                                                             "(off) and 8")
        if self.retention_jobs < 0:
            raise InvalidArgument("retention_jobs", f"{self.retention_jobs} is negative (0: no limit)")

    @property
    def effective_socket_mode(self) -> int:
        """The socket file's mode: ``socket_mode``, or the default for who may be served."""
        if self.socket_mode != -1:
            return self.socket_mode
        return 0o666 if os.getuid() == 0 or self.allow_other_users else 0o600

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def tcp_auth(self) -> str:
        """How TCP callers prove who they are: "mtls", "token", "insecure", or "" when none is set."""
        if self.tls_cert:
            return "mtls"
        if self.token_file:
            return "token"
        return "insecure" if self.insecure_tcp else ""


def _typed(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` names, or InvalidArgument naming ``name`` and the type expected."""
    if name == "socket_mode" and isinstance(value, str):
        try:
            return int(value, 8)
        except ValueError:
            raise InvalidArgument(name, f"{value[:40]!r} is not an octal file mode such as \"0666\"") from None
    origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, list):
            raise InvalidArgument(name, f"expected a list, got {_describe(value)}")
        (item,) = typing.get_args(hint)
        if item is str:
            # uids may be written as numbers in an admins list
            bad = [v for v in value if not isinstance(v, (str, int)) or isinstance(v, bool)]
            if bad:
                raise InvalidArgument(name, f"expected a list of strings, got an item {_describe(bad[0])}")
            return [str(v) for v in value]
        return list(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise InvalidArgument(name, f"expected true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(name, f"expected a whole number, got {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidArgument(name, f"expected a number, got {_describe(value)}")
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidArgument(name, f"expected a finite number, got {value}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise InvalidArgument(name, f"expected a string, got {_describe(value)}")
        if "\x00" in value:
            raise InvalidArgument(name, "contains a NUL character")
        return value
    return value


def _describe(value: Any) -> str:
    kind = {str: "a string", bool: "a boolean", int: "a whole number", float: "a number", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)
    if isinstance(value, str):
        return f"{kind} {quote(value, 60)}"  # what the user wrote: escaped and cut like any quote
    text = repr(value)
    return f"{kind} {text[:60]}{'...' if len(text) > 60 else ''}"
