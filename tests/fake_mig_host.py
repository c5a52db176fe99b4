"""A host with the NVIDIA driver's MIG device files, faked under a temporary directory, for the
node agents' tests: the simulated GPUs have none of their own."""

from __future__ import annotations

from pathlib import Path

from gpuos.client import Client
from gpuos.v1 import devices_pb2

# The driver numbers GPU instances 0..14 and compute instances 0..7 in each.
GPU_INSTANCES, COMPUTE_INSTANCES = 15, 8


class MigHost:
    """``dev`` (a /dev with the GPUs' nodes and every capability node) and ``mig_minors`` (the
    driver's table) for GPUs of minor numbers ``gpu_minors``."""

    def __init__(self, root: Path, gpu_minors: tuple[int, ...]) -> None:
        self.dev = root / "dev"
        self.mig_minors = root / "mig-minors"
        (self.dev / "nvidia-caps").mkdir(parents=True)
        for name in ("nvidiactl", "nvidia-uvm", *(f"nvidia{m}" for m in gpu_minors)):
            (self.dev / name).touch()
        # As the driver lays the table out: config and monitor first, then per GPU each GPU
        # instance's access followed by its compute instances'.
        self.minors = {"config": 1, "monitor": 2}
        for gpu in gpu_minors:
            for gi in range(GPU_INSTANCES):
                self.minors[f"gpu{gpu}/gi{gi}/access"] = len(self.minors) + 1
                for ci in range(COMPUTE_INSTANCES):
                    self.minors[f"gpu{gpu}/gi{gi}/ci{ci}/access"] = len(self.minors) + 1
        self.mig_minors.write_text("".join(f"{name} {minor}\n" for name, minor in self.minors.items()))
        for minor in self.minors.values():
            (self.dev / "nvidia-caps" / f"nvidia-cap{minor}").touch()

    def caps(self, gpu_minor: int, gpu_instance: int, compute_instance: int) -> list[str]:
        """The capability nodes a container of that slice must get, GPU instance's first."""
        gi = self.minors[f"gpu{gpu_minor}/gi{gpu_instance}/access"]
        ci = self.minors[f"gpu{gpu_minor}/gi{gpu_instance}/ci{compute_instance}/access"]
        return [f"/dev/nvidia-caps/nvidia-cap{gi}", f"/dev/nvidia-caps/nvidia-cap{ci}"]


class WithMinors(Client):
    """A gpuosd client that sees each simulated GPU with a device node: minor number index + ``offset``."""

    def __init__(self, socket: str, offset: int) -> None:
        super().__init__(socket=socket)
        self.offset = offset

    def devices(self) -> devices_pb2.ListDevicesResponse:
        listed = super().devices()
        for d in listed.devices:
            d.minor_number = d.index + self.offset
        return listed
