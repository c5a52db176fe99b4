"""Container Device Interface (CDI) spec files for gpuos partitions.

A CDI spec is a JSON file in a directory the container runtime watches (``/var/run/cdi`` for
specs that come and go with their owner); a container asks for ``<vendor>/<class>=<name>`` and
the runtime applies that device's ``containerEdits`` (environment, device nodes, mounts) to the
container's OCI spec. The device plugin and the DRA driver write one spec file per owner (a
kubelet allocation, a claim UID) and remove it when the owner is gone, so a runtime never sees a
device whose partition gpuosd has already released.

Written in CDI spec version 0.6.0 (containerd 1.7 and CRI-O 1.28 read it). Device names must be
unique within a vendor/class across every file in the directory, so owners put their own id
into the names they choose.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gpuos.files import write_atomic
from gpuos.v1 import devices_pb2

log = logging.getLogger("gpuos.cdi")

CDI_VERSION = "0.6.0"
DEFAULT_CLASS = "gpuos.io/gpu"
DEFAULT_DIR = "/var/run/cdi"
# Which gpuos agent wrote a spec file (a spec annotation): each sweeps only its own files.
OWNER = "gpuos.io/owner"
# The NVIDIA driver's table of MIG capability minors: lines "gpu<minor>/gi<id>/access <n>" and
# "gpu<minor>/gi<id>/ci<id>/access <n>", naming the device node /dev/nvidia-caps/nvidia-cap<n>.
# procfs shows it in any container, so the agents read it where they run.
MIG_MINORS = "/proc/driver/nvidia-caps/mig-minors"

# CDI's rules: a device name and the class segment of a kind begin and end with an alphanumeric
# character, with alphanumerics, '-', '_', '.' (and ':' in device names only) between; the vendor
# is a DNS subdomain.
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?$")
_CLASS = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class CdiError(ValueError):
    """A CDI name or device that the spec would not accept; the message names the argument."""


@dataclass(frozen=True)
class Mount:
    """A bind mount of ``host_path`` at ``container_path`` in the container."""

    host_path: str
    container_path: str
    read_only: bool = False


@dataclass(frozen=True)
class CdiDevice:
    """One CDI device: what the runtime adds to a container that asks for it.

    ``device_nodes`` are host device paths (``/dev/nvidia0``), made at the same path inside.
    """

    name: str
    env: Mapping[str, str] = field(default_factory=dict)
    mounts: Sequence[Mount] = ()
    device_nodes: Sequence[str] = ()


def validate_name(name: str, argument: str = "name") -> str:
    """``name`` if it is a valid CDI device name, else a CdiError naming ``argument``."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise CdiError(f"{argument} {name!r} is not a CDI device name: letters, digits, '-', '_', '.' and ':', "
                       "beginning and ending with a letter or digit")
    return name


def validate_class(vendor_class: str) -> str:
    """``vendor_class`` (``gpuos.io/gpu``) if CDI accepts it as a kind, else a CdiError."""
    vendor, sep, cls = vendor_class.partition("/") if isinstance(vendor_class, str) else ("", "", "")
    problem = ""
    if not sep or "/" in cls:
        problem = "must be <vendor>/<class>"
    elif len(vendor) > 253 or not all(_DNS_LABEL.match(label) for label in vendor.split(".")):
        problem = "its vendor must be a DNS subdomain (lower-case labels separated by dots)"
    elif len(cls) > 63 or not _CLASS.match(cls):
        problem = "its class must be up to 63 letters, digits, '-', '_' or '.', beginning and ending alphanumeric"
    if problem:
        raise CdiError(f"vendor_class {vendor_class!r} {problem}")
    return vendor_class


def qualified(name: str, vendor_class: str = DEFAULT_CLASS) -> str:
    """The fully qualified CDI device name a container runtime is given: ``gpuos.io/gpu=<name>``."""
    return f"{validate_class(vendor_class)}={validate_name(name)}"


def spec_path(cdi_dir: str, name: str, vendor_class: str = DEFAULT_CLASS) -> str:
    """Where :func:`write_spec` puts the spec file of owner ``name``."""
    vendor, _, cls = validate_class(vendor_class).partition("/")
    return os.path.join(cdi_dir, f"{vendor}-{cls}_{validate_name(name, 'spec name')}.json")


def specs(cdi_dir: str, vendor_class: str = DEFAULT_CLASS) -> dict[str, str]:
    """The spec files :func:`write_spec` wrote in ``cdi_dir`` for ``vendor_class``: owner name -> path."""
    vendor, _, cls = validate_class(vendor_class).partition("/")
    prefix = f"{vendor}-{cls}_"
    try:
        names = os.listdir(cdi_dir)
    except FileNotFoundError:
        return {}
    return {n[len(prefix):-len(".json")]: os.path.join(cdi_dir, n) for n in sorted(names)
            if n.startswith(prefix) and n.endswith(".json") and _NAME.match(n[len(prefix):-len(".json")])}


def _edits(device: CdiDevice) -> dict[str, object]:
    edits: dict[str, object] = {}
    for key in device.env:
        if not _ENV_KEY.match(key):
            raise CdiError(f"env of device {device.name!r}: {key!r} is not an environment variable name")
    if device.env:
        edits["env"] = [f"{k}={v}" for k, v in sorted(device.env.items())]
    if device.device_nodes:
        for path in device.device_nodes:
            if not os.path.isabs(path):
                raise CdiError(f"device_nodes of device {device.name!r}: {path!r} is not an absolute path")
        edits["deviceNodes"] = [{"path": p} for p in device.device_nodes]
    if device.mounts:
        for m in device.mounts:
            if not (os.path.isabs(m.host_path) and os.path.isabs(m.container_path)):
                raise CdiError(f"mounts of device {device.name!r}: {m.host_path!r} -> {m.container_path!r} "
                               "must both be absolute paths")
        edits["mounts"] = [
            {"hostPath": m.host_path, "containerPath": m.container_path,
             "options": ["rbind", "ro" if m.read_only else "rw", "nosuid", "nodev"], "type": "bind"}
            for m in device.mounts
        ]
    return edits


def render(devices: Iterable[CdiDevice], vendor_class: str = DEFAULT_CLASS,
           annotations: Mapping[str, str] | None = None) -> dict[str, object]:
    """The CDI spec (as JSON-ready data) holding ``devices`` under ``vendor_class``, with the
    spec-level ``annotations`` (CDI 0.6.0) if any."""
    listed = list(devices)
    if not listed:
        raise CdiError("devices: a CDI spec needs at least one device")
    names = [validate_name(d.name, "device name") for d in listed]
    if len(set(names)) != len(names):
        raise CdiError(f"devices: names must be unique, got {sorted(names)}")
    document: dict[str, object] = {
        "cdiVersion": CDI_VERSION,
        "kind": validate_class(vendor_class),
        "devices": [{"name": d.name, "containerEdits": _edits(d)} for d in listed],
    }
    if annotations:
        document["annotations"] = dict(sorted(annotations.items()))
    return document


def write_spec(cdi_dir: str, vendor_class: str = DEFAULT_CLASS, devices: Iterable[CdiDevice] = (), *,
               name: str, annotations: Mapping[str, str] | None = None) -> str:
    """Write (or replace) owner ``name``'s spec file of ``devices`` in ``cdi_dir``; returns its path.

    The file appears whole or not at all (:func:`gpuos.files.write_atomic`, whose temporary name
    the runtime does not read), mode 0644 so the container runtime can read it whatever user
    writes it.
    """
    document = render(devices, vendor_class, annotations)
    path = spec_path(cdi_dir, name, vendor_class)
    os.makedirs(cdi_dir, exist_ok=True)
    write_atomic(path, json.dumps(document, indent=2, sort_keys=True) + "\n", mode=0o644)
    return path


def remove_spec(path: str) -> bool:
    """Remove a spec file written by :func:`write_spec`; False if it was already gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def read_annotations(path: str) -> dict[str, str]:
    """The spec-level annotations of spec file ``path``; none for a file that is gone or is not
    a JSON spec (another writer's, or one being replaced: never taken for a gpuos file)."""
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except (OSError, ValueError):
        return {}
    notes = document.get("annotations") if isinstance(document, dict) else None
    return {str(k): str(v) for k, v in notes.items()} if isinstance(notes, dict) else {}


def read_spec(path: str) -> list[CdiDevice]:
    """The devices of a spec file written by :func:`write_spec` (for checks and tests)."""
    with open(path, encoding="utf-8") as f:
        document = json.load(f)
    out = []
    for d in document.get("devices", []):
        edits = d.get("containerEdits", {})
        env = dict(item.split("=", 1) for item in edits.get("env", []))
        mounts = tuple(Mount(m["hostPath"], m["containerPath"], "ro" in m.get("options", []))
                       for m in edits.get("mounts", []))
        nodes = tuple(n["path"] for n in edits.get("deviceNodes", []))
        out.append(CdiDevice(d["name"], env, mounts, nodes))
    return out


# The driver's control nodes, which every container of a GPU needs beside its /dev/nvidia<N>.
CONTROL_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")


def device_nodes(minors: Iterable[int], dev_root: str) -> list[str]:
    """The host device nodes a container of GPUs ``minors`` needs, those that exist under ``dev_root``.

    A simulated GPU has no node (minor -1), and then neither are the driver's control nodes given.
    """
    gpus = [f"nvidia{m}" for m in sorted(set(minors)) if m >= 0]
    if not gpus:
        return []
    return [f"/dev/{name}" for name in (*gpus, *CONTROL_NODES) if os.path.exists(os.path.join(dev_root, name))]


def read_mig_minors(path: str = MIG_MINORS) -> dict[str, int] | None:
    """The driver's MIG capability table at ``path`` (``gpu0/gi1/ci0/access`` -> 13); None when
    there is no such file (a driver without MIG support, or none at all)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    table = {}
    for line in lines:
        fields = line.split()
        if len(fields) == 2 and fields[1].isdigit():
            table[fields[0]] = int(fields[1])
    return table


def mig_capability_nodes(gpu_minor: int, gpu_instance: int, compute_instance: int, dev_root: str,
                         mig_minors: str = MIG_MINORS) -> list[str]:
    """The capability device nodes a container of one MIG slice needs besides its GPU's: those of
    its GPU instance and of its compute instance (``/dev/nvidia-caps/nvidia-cap<n>``, as the NVIDIA
    container toolkit gives them), found in the driver's table ``mig_minors``; those that exist
    under ``dev_root``. None without the table (no MIG support: the simulator, a driver without it).
    """
    table = read_mig_minors(mig_minors)
    if table is None:
        log.debug("no %s: no MIG capability device nodes for the slice of GPU %d", mig_minors, gpu_minor)
        return []
    nodes = []
    for cap in (f"gpu{gpu_minor}/gi{gpu_instance}/access", f"gpu{gpu_minor}/gi{gpu_instance}/ci{compute_instance}/access"):
        minor = table.get(cap)
        if minor is None:
            log.warning("%s lists no %s: a container of that MIG slice will not reach it", mig_minors, cap)
            continue
        name = f"nvidia-caps/nvidia-cap{minor}"
        if not os.path.exists(os.path.join(dev_root, name)):
            log.warning("%s (%s) does not exist under %s: a container of that MIG slice will not reach it",
                        name, cap, dev_root)
        else:
            nodes.append(f"/dev/{name}")
    return nodes


def reservation_nodes(reservation: devices_pb2.Reservation, minors: Sequence[int], dev_root: str,
                      mig_minors: str = MIG_MINORS) -> list[str]:
    """The host device nodes a container of ``reservation`` on the GPUs ``minors`` needs: the
    GPUs' and the driver's (:func:`device_nodes`) and, for a MIG slice, its capability nodes
    (:func:`mig_capability_nodes`)."""
    nodes = device_nodes(minors, dev_root)
    if nodes and reservation.HasField("mig_instance"):
        (gpu,) = {m for m in minors if m >= 0}  # a slice is on exactly one GPU
        mig = reservation.mig_instance
        nodes += mig_capability_nodes(gpu, mig.gpu_instance_id, mig.compute_instance_id, dev_root, mig_minors)
    return nodes
