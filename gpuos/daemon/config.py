"""gpuosd's configuration: built-in defaults, then a TOML file, then command-line flags."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gpuos.errors import InvalidArgument

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
    # Optional TCP address (HOST:PORT). TCP callers cannot be identified; they act as ``tcp_tenant``.
    listen: str = ""
    state_dir: str = field(default_factory=default_state_dir)
    backend: str = "auto"
    sim_gpus: str = "2xH100-80GB"
    # Empty: the policy active before the last stop, else fifo.
    policy: str = ""
    # User names (or numeric uids) allowed to see and cancel every tenant's jobs and to set policy.
    admins: list[str] = field(default_factory=list)
    tcp_tenant: str = "remote"
    # Permissions of the Unix socket; tenancy is enforced per caller uid, so all users may connect.
    socket_mode: int = 0o666
    # Seconds between SIGTERM and SIGKILL when a job is cancelled or preempted.
    kill_grace_seconds: float = 5.0
    log_level: str = "INFO"
    # Prometheus endpoint (HOST:PORT); empty: none.
    metrics_listen: str = ""

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
            except tomllib.TOMLDecodeError as exc:
                raise InvalidArgument("config", f"{path} is not valid TOML: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InvalidArgument("config", f"unknown setting {unknown[0]!r}; settings are {', '.join(known)}")
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        if self.backend not in ("auto", "sim", "nvml"):
            raise InvalidArgument("backend", f"{self.backend!r} is not one of auto, sim, nvml")
        if len(os.fsencode(self.socket)) > 107:
            raise InvalidArgument("socket", f"{self.socket!r} is longer than a Unix socket path may be (107 bytes)")
        for name in ("listen", "metrics_listen"):
            value = getattr(self, name)
            if value and (":" not in value or not value.rsplit(":", 1)[1].isdigit()):
                raise InvalidArgument(name, f"{value!r} is not HOST:PORT")
        if isinstance(self.socket_mode, str):
            self.socket_mode = int(self.socket_mode, 8)
        if not isinstance(self.admins, list):
            raise InvalidArgument("admins", "must be a list of user names or uids")
        self.admins = [str(a) for a in self.admins]

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)
