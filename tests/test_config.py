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


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("kill_grace_seconds", "5", "expected a number"),
        ("socket_mode", 666, "not a file mode"),
        ("socket_mode", "rw-rw-rw-", "octal"),
        ("admins", "root", "expected a list"),
        ("admins", [["root"]], "list of strings"),
        ("insecure_tcp", "yes", "true or false"),
        ("max_streams_per_tenant", 1.5, "whole number"),
        ("retention_seconds", float("nan"), "finite"),
        ("backend", 3, "expected a string"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_naming_the_key(key: str, value: object, expected: str) -> None:
    with pytest.raises(InvalidArgument, match=expected) as caught:
        DaemonConfig.load(None, {key: value})
    assert caught.value.field == key


def test_a_socket_mode_may_be_written_as_an_octal_string() -> None:
    assert DaemonConfig.load(None, {"socket_mode": "0660"}).socket_mode == 0o660


def test_mutual_tls_needs_all_three_paths() -> None:
    with pytest.raises(InvalidArgument, match="tls_ca"):
        DaemonConfig.load(None, {"tls_cert": "/c.pem", "tls_key": "/k.pem"})


def test_numbers_of_a_toml_file_are_accepted_as_they_are_written(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("kill_grace_seconds = 5\nsocket_mode = 0o600\nadmins = [\"alice\", 1001]\n")
    config = DaemonConfig.load(str(path), {})
    assert (config.kill_grace_seconds, config.socket_mode, config.admins) == (5.0, 0o600, ["alice", "1001"])


def test_the_shipped_settings_file_loads() -> None:
    shipped = Path(__file__).resolve().parent.parent / "systemd" / "gpuosd.toml"
    config = DaemonConfig.load(str(shipped), {})
    assert config.max_streams_per_tenant == 1024 and config.contended_stream_messages_per_second == 500.0
