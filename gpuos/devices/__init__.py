"""Device backends: the simulator (``sim``) and the NVIDIA driver (``nvml``), one interface."""

from gpuos.devices.backend import DeviceBackend, DeviceInfo, DeviceStatus, MigProfile, ProcessUsage

__all__ = ["DeviceBackend", "DeviceInfo", "DeviceStatus", "MigProfile", "ProcessUsage"]
