"""Device backends: the simulator (``sim``) and the NVIDIA driver (``nvml``), one interface."""

from gpuos.devices.backend import DeviceBackend, DeviceInfo, DeviceStatus, ProcessUsage

__all__ = ["DeviceBackend", "DeviceInfo", "DeviceStatus", "ProcessUsage"]
