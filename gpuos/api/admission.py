"""Admission: refuse a job that no GPU on this machine could ever run, before it is acknowledged.

It sits in the API because it runs on the request path, after conversion and before the store
makes the job durable (API -> store -> scheduler): it reads only the device list, never the
control loop.
"""

from __future__ import annotations

from dataclasses import replace

from gpuos.devices.backend import DeviceInfo
from gpuos.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from gpuos.jobs import JobKind, JobSpec
from gpuos.kernels.registry import require_runtime
from gpuos.text import quote
from gpuos.units import format_bytes


def admit(spec: JobSpec, devices: list[DeviceInfo], mps_available: bool = True) -> JobSpec:
    """Raise if ``spec`` could not run on these devices even with all of them idle.

    Returns the spec with GPU type names spelled as the devices spell them.
    """
    request = spec.resources
    if spec.kind == JobKind.KERNEL:
        # Refused now, not accepted and then failed with an import traceback in the job's log.
        require_runtime()
    if not devices:
        raise ResourceExhausted("this machine has no GPUs under gpuos")
    if request.gpu_milli and not (request.timeslice or request.executor) and not mps_available:
        raise FailedPrecondition(
            "resources.gpu_fraction: this machine has no MPS to share a GPU by fraction; "
            "submit with sharing timeslice (gpuosctl submit --share timeslice) instead"
        )
    candidates = devices
    if request.gpu_types:
        wanted = {t.lower() for t in request.gpu_types}
        candidates = [d for d in devices if d.model.lower() in wanted]
        if not candidates:
            here = ", ".join(sorted({d.model for d in devices}))
            raise InvalidArgument(
                "resources.gpu_types",
                f"no GPU here is one of {quote(', '.join(request.gpu_types))}; GPUs here: {here}",
            )
        spelled = tuple(sorted({d.model for d in candidates}))
        spec = replace(spec, resources=replace(request, gpu_types=spelled))
    if request.mig_profile:
        capable = [d for d in candidates if d.mig_capable]
        if not capable:
            models = ", ".join(sorted({d.model for d in candidates}))
            raise InvalidArgument("resources.mig_profile", f"no GPU here supports MIG ({models})")
        offering = [d for d in capable if d.mig_profile(request.mig_profile)]
        if not offering:
            menus = "; ".join(
                f"{d.model}: {', '.join(p.name for p in d.mig_profiles)}"
                for d in {d.model: d for d in capable}.values()
            )
            raise InvalidArgument(
                "resources.mig_profile", f"{quote(request.mig_profile)} is not a MIG profile of any GPU here ({menus})"
            )
        largest = max(p.memory_bytes for d in offering for p in d.mig_profiles if p.name == request.mig_profile)
        if request.memory_bytes > largest:
            raise ResourceExhausted(
                f"resources.memory_bytes: {format_bytes(request.memory_bytes)} is more than a "
                f"{request.mig_profile} slice has ({format_bytes(largest)})"
            )
        return spec
    if request.gpus > len(candidates):
        raise ResourceExhausted(
            f"resources.gpus: asks for {request.gpus} GPUs; this machine has {len(candidates)} that fit"
        )
    largest = max(d.memory_total for d in candidates)
    if request.memory_bytes > largest:
        raise ResourceExhausted(
            f"resources.memory_bytes: asks for {format_bytes(request.memory_bytes)} per GPU; "
            f"the largest GPU here has {format_bytes(largest)}"
        )
    return spec
