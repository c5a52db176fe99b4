"""A GPU's host NUMA node: from sysfs on NVML hosts, from the spec on the simulator."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuos.daemon.daemon import Daemon
from gpuos.devices.numa import UNKNOWN, numa_node, sysfs_address
from gpuos.devices.sim import SimBackend
from gpuos.errors import InvalidArgument


@pytest.mark.parametrize(("bus_id", "address"), [
    ("00000000:3B:00.0", "0000:3b:00.0"),
    ("0000:3b:00.0", "0000:3b:00.0"),
    ("00000001:C1:00.1", "0001:c1:00.1"),
    ("17:00.0", "0000:17:00.0"),
])
def test_nvml_bus_ids_map_to_sysfs_addresses(bus_id: str, address: str) -> None:
    assert sysfs_address(bus_id) == address


def test_a_malformed_bus_id_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="bus_id"):
        sysfs_address("GPU-0")


def fake_sysfs(root: Path, address: str, content: str) -> Path:
    device = root / "bus" / "pci" / "devices" / address
    device.mkdir(parents=True)
    (device / "numa_node").write_text(content)
    return root


def test_the_numa_node_is_read_from_sysfs(tmp_path: Path) -> None:
    assert numa_node("00000000:3B:00.0", fake_sysfs(tmp_path, "0000:3b:00.0", "1\n")) == 1


@pytest.mark.parametrize("content", ["-1\n", "garbage"])
def test_a_host_without_numa_says_unknown(tmp_path: Path, content: str) -> None:
    assert numa_node("00000000:3B:00.0", fake_sysfs(tmp_path, "0000:3b:00.0", content)) == UNKNOWN


def test_a_device_absent_from_sysfs_is_unknown(tmp_path: Path) -> None:
    assert numa_node("00000000:3B:00.0", tmp_path) == UNKNOWN
    assert numa_node("not-a-bus-id", tmp_path) == UNKNOWN


def test_simulated_gpus_take_their_numa_node_from_the_spec() -> None:
    backend = SimBackend("1xH100-80GB,2xL4@1")
    assert [d.numa_node for d in backend.devices()] == [0, 1, 1]


def test_a_numa_node_out_of_range_is_refused_naming_sim_gpus() -> None:
    with pytest.raises(InvalidArgument, match="NUMA node 64"):
        SimBackend("1xL4@64")


def test_the_api_reports_each_gpus_numa_node(daemon: Daemon) -> None:
    from gpuos.client import Client

    with Client(socket=daemon.config.socket) as c:
        assert [d.numa_node for d in c.devices().devices] == [0, 0]
