"""gpuosd settings: defaults, TOML file, flags, in that order of precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuos.daemon.config import DaemonConfig, default_socket
from gpuos.errors import InvalidArgument


def test_socket_default_follows_gpuos_socket_then_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUOS_SOCKET", "/tmp/a.sock")
    assert default_socket() == "/tmp/a.sock"
    monkeypatch.delenv("GPUOS_SOCKET")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/7")
    assert default_socket() == "/run/user/7/gpuos.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_socket() == "/run/gpuos/gpuos.sock"


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('backend = "sim"\nsim_gpus = "1xL4"\npolicy = "fifo"\n')
    config = DaemonConfig.load(str(path), {"sim_gpus": "2xH100-80GB", "policy": None})
    assert (config.backend, config.sim_gpus, config.policy) == ("sim", "2xH100-80GB", "fifo")


def test_an_unknown_setting_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('bakend = "sim"\n')
    with pytest.raises(InvalidArgument, match="bakend"):
        DaemonConfig.load(str(path), {})


def test_a_broken_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("backend = \n")
    with pytest.raises(InvalidArgument, match="not valid TOML"):
        DaemonConfig.load(str(path), {})


def test_an_unknown_backend_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="backend"):
        DaemonConfig.load(None, {"backend": "rocm"})
