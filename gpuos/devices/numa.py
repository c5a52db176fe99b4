"""The host NUMA node a PCI device (a GPU) is attached to, as Linux reports it in sysfs."""

from __future__ import annotations

import re
from pathlib import Path

UNKNOWN = -1

# NVML writes the PCI domain with 8 hex digits ("00000000:3B:00.0"); sysfs with 4 ("0000:3b:00.0").
_BUS_ID = re.compile(r"^(?:([0-9a-fA-F]{1,8}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")


def sysfs_address(bus_id: str) -> str:
    """``bus_id`` (NVML's or lspci's form) as sysfs names the device. Raises ValueError if malformed."""
    match = _BUS_ID.match(bus_id.strip())
    if not match:
        raise ValueError(f"bus_id {bus_id!r} is not a PCI address such as 00000000:3B:00.0")
    domain, bus, device, function = match.groups()
    return f"{int(domain or '0', 16):04x}:{bus.lower()}:{device.lower()}.{function}"


def numa_node(bus_id: str, sysfs: Path = Path("/sys")) -> int:
    """The NUMA node of the PCI device at ``bus_id``; UNKNOWN (-1) when the host does not say.

    Linux writes -1 for a device on a host without NUMA, and the file is absent off Linux or
    inside some containers: both mean no topology hint, never an error.
    """
    try:
        path = sysfs / "bus" / "pci" / "devices" / sysfs_address(bus_id) / "numa_node"
        node = int(path.read_text().strip())
    except (OSError, ValueError):
        return UNKNOWN
    return node if node >= 0 else UNKNOWN
