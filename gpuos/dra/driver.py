"""Preparing and unpreparing ResourceClaims on this node: the kubelet's DRAPlugin service.

Prepare reads the claim from the API server, reserves each partition its allocation names
through gpuosd (as the device plugin does, with keys), writes one CDI spec file for the claim
carrying each reservation's environment, mounts and device nodes, and answers the CDI device
names. Unprepare releases the reservations and removes the spec. Both are idempotent and
checkpointed (:mod:`gpuos.dra.checkpoint`); per-claim failures are answered in the claim's
``error`` field, never as a failed call, so one bad claim does not fail the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from gpuos import cdi
from gpuos.client import ApiError, Client
from gpuos.dra import claims as claimlib
from gpuos.dra.checkpoint import PREPARED, PREPARING, Checkpoint, ClaimRecord, PreparedDevice
from gpuos.dra.inventory import DeviceRef, Kind, gpu_index, parse
from gpuos.errors import GpuosError
from gpuos.v1 import devices_pb2

log = logging.getLogger("gpuos.dra")

RESERVATION_PREFIX = "dra:"
CDI_CLASS = "gpuos.io/gpu"
# The owner annotation of the driver's spec files: the device plugin writes the same class into
# the same directory, and neither may take the other's files for orphans.
CDI_OWNER = "gpuos-dra-plugin"


class ClaimSource(Protocol):
    """Where ResourceClaims are read from (the API server)."""

    def read(self, namespace: str, name: str) -> Any:
        """The claim (the client's ``ResourceV1ResourceClaim``); raises ClaimNotFound if there is none."""
        ...


class ClaimNotFound(LookupError):
    """The API server has no such claim (or only one made anew under its name)."""


class ApiClaims:
    """ResourceClaims read through the kubernetes client's resource.k8s.io/v1 API."""

    def __init__(self, api: Any) -> None:
        self.api = api  # kubernetes.client.ResourceV1Api

    def read(self, namespace: str, name: str) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.read_namespaced_resource_claim(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise ClaimNotFound(f"ResourceClaim {namespace}/{name} does not exist") from None
            raise


@dataclass(frozen=True)
class ClaimRef:
    namespace: str
    uid: str
    name: str


@dataclass(frozen=True)
class Outcome:
    """One claim's answer: its devices, or why it could not be done."""

    devices: tuple[PreparedDevice, ...] = ()
    error: str = ""


class Driver:
    """Prepares claims on this node's pool; every change is checkpointed before it is answered."""

    def __init__(self, client: Client, claims: ClaimSource, checkpoint: Checkpoint, cdi_dir: str, node: str,
                 on_change: Callable[[], None] = lambda: None, dev_root: str = "/dev",
                 mig_minors: str = cdi.MIG_MINORS) -> None:
        """``dev_root``: where this process sees the host's ``/dev`` (to tell which nodes exist);
        ``mig_minors``: the driver's table of MIG capability minors (a slice's capability nodes)."""
        self.client = client
        self.dev_root = dev_root
        self.mig_minors = mig_minors
        self.claims = claims
        self.checkpoint = checkpoint
        self.cdi_dir = cdi_dir
        self.node = node
        self.on_change = on_change
        # One claim at a time: gpuosd answers a reservation in milliseconds, and a claim's records,
        # reservations and spec file must never interleave with another's.
        self._lock = threading.Lock()

    # -- prepare -------------------------------------------------------------------------------

    def prepare(self, ref: ClaimRef) -> Outcome:
        if not (ref.uid and ref.namespace and ref.name):
            return Outcome(error="the claim needs a namespace, a uid and a name")
        with self._lock:
            done = self.checkpoint.get(ref.uid)
            if done is not None and done.state == PREPARED:
                return Outcome(done.devices)
            try:
                outcome = self._prepare(ref)
            except (GpuosError, cdi.CdiError, ClaimNotFound) as exc:
                outcome = Outcome(error=f"claim {ref.namespace}/{ref.name}: {exc}")
            except ApiError as exc:
                outcome = Outcome(error=f"claim {ref.namespace}/{ref.name}: gpuosd refused: {exc.details}")
            except Exception as exc:  # the API server, unreachable or refusing: the kubelet retries
                log.exception("preparing claim %s/%s", ref.namespace, ref.name)
                outcome = Outcome(error=f"claim {ref.namespace}/{ref.name}: {type(exc).__name__}: {exc}")
        if outcome.error:
            log.warning("%s", outcome.error)
        self.on_change()
        return outcome

    def _prepare(self, ref: ClaimRef) -> Outcome:
        claim = self.claims.read(ref.namespace, ref.name)
        uid = getattr(claim.metadata, "uid", None)
        if uid != ref.uid:
            raise ClaimNotFound(f"the ResourceClaim now has uid {uid}, not {ref.uid}: it was deleted and made anew")
        results, config = claimlib.allocated(claim)
        gpus = list(self.client.devices().devices)
        minors = {g.index: g.minor_number for g in gpus}
        wanted = claimlib.partitions(ref.uid, results, config, gpus, self.node)
        keys = tuple(k for p in wanted for k in p.keys)
        spec = cdi.spec_path(self.cdi_dir, ref.uid, CDI_CLASS)
        # Recorded first: if the driver dies while reserving, Unprepare (or the next Prepare, whose
        # keys release what this one left) still finds what to release.
        self.checkpoint.put(ClaimRecord(ref.uid, ref.namespace, ref.name, PREPARING, keys))
        held: list[devices_pb2.Reservation] = []
        try:
            for part in wanted:
                held.append(self.client.reserve(f"{RESERVATION_PREFIX}{ref.namespace}/{ref.name}",
                                                list(part.gpu_uuids), part.resources, keys=list(part.keys)))
            if any(r.kind is Kind.MIG for p in wanted for r in p.refs):
                self._check_slots(wanted)
            devices = [
                cdi.CdiDevice(f"{ref.uid}-{i}", dict(r.env),
                              [cdi.Mount(m.host_path, m.container_path, m.read_only) for m in r.mounts],
                              cdi.reservation_nodes(r, [minors.get(d.gpu, -1) for d in part.refs], self.dev_root,
                                                    self.mig_minors))
                for i, (r, part) in enumerate(zip(held, wanted, strict=True))
            ]
            if devices:
                cdi.write_spec(self.cdi_dir, CDI_CLASS, devices, name=ref.uid, annotations={cdi.OWNER: CDI_OWNER})
            answered = []
            for part, device in zip(wanted, devices, strict=True):
                qualified = cdi.qualified(device.name, CDI_CLASS)
                for k, member in enumerate(part.devices):
                    # Whole GPUs of one request share one CDI device; naming it once keeps the
                    # runtime from applying the same edits twice.
                    answered.append(PreparedDevice((member.request,), member.pool, member.device,
                                                   (qualified,) if k == 0 else ()))
            record = ClaimRecord(ref.uid, ref.namespace, ref.name, PREPARED, keys, tuple(r.job_id for r in held),
                                 tuple(answered), spec if devices else "")
            self.checkpoint.put(record)
        except BaseException:
            # Nothing half-done stays: what was reserved is released, the spec and record go.
            if held:
                self._release(keys)
            cdi.remove_spec(spec)
            self.checkpoint.remove(ref.uid)
            raise
        log.info("prepared claim %s/%s: %s", ref.namespace, ref.name, ", ".join(d.device for d in answered) or "nothing")
        return Outcome(record.devices)

    def _check_slots(self, wanted: Sequence[claimlib.Partition]) -> None:
        """Say so when gpuosd put a MIG slice elsewhere than the slot the scheduler was offered."""
        now = {g.index: {(m.profile, m.start) for m in g.mig_instances} for g in self.client.devices().devices}
        for ref in (r for p in wanted for r in p.refs if r.kind is Kind.MIG):
            if (ref.profile, ref.start) not in now.get(ref.gpu, set()):
                log.warning("GPU %d: gpuosd placed the %s slice of %s elsewhere than slot %d; until the claim "
                            "ends both slots count as taken", ref.gpu, ref.profile, ref.name, ref.start)

    # -- unprepare -----------------------------------------------------------------------------

    def unprepare(self, ref: ClaimRef) -> Outcome:
        with self._lock:
            record = self.checkpoint.get(ref.uid)
            if record is None:
                return Outcome()  # never prepared here, or already unprepared
            try:
                self._release(record.keys)
            except ApiError as exc:
                return Outcome(error=f"claim {record.namespace}/{record.name}: gpuosd could not release it: "
                                     f"{exc.details}")
            # By its path, not the record's: a driver that died preparing may have written it.
            cdi.remove_spec(cdi.spec_path(self.cdi_dir, ref.uid, CDI_CLASS))
            self.checkpoint.remove(ref.uid)
        log.info("unprepared claim %s/%s", record.namespace, record.name)
        self.on_change()
        return Outcome()

    def _release(self, keys: Sequence[str]) -> int:
        return self.client.release(list(keys)) if keys else 0

    # -- what is held --------------------------------------------------------------------------

    def held(self, gpus: Sequence[devices_pb2.Device]) -> tuple[set[DeviceRef], set[str]]:
        """The devices prepared claims hold (as published) and the gpuosd jobs holding them."""
        profiles = {g.index: [p.name for p in g.mig_profiles] for g in gpus}
        refs: set[DeviceRef] = set()
        jobs: set[str] = set()
        for record in self.checkpoint.records():
            jobs.update(record.job_ids)
            for name in record.held:
                try:
                    refs.add(parse(name, profiles.get(gpu_index(name), [])))
                except GpuosError:
                    log.warning("claim %s/%s holds %s, which no GPU here has now", record.namespace, record.name, name)
        return refs, jobs

    def reconcile(self) -> int:
        """After a restart: release the gpuosd reservations of this driver that no checkpointed
        claim holds (left by a driver that died between reserving and recording), and remove the
        driver's CDI specs no claim owns. How many reservations it released."""
        with self._lock:
            known = {r.uid for r in self.checkpoint.records()}
            orphans = [key for r in self.client.reservations(RESERVATION_PREFIX)
                       for key in r.keys if key.split("/", 1)[0] not in known]
            released = self._release(orphans) if orphans else 0
            for owner, path in cdi.specs(self.cdi_dir, CDI_CLASS).items():
                if owner not in known and cdi.read_annotations(path).get(cdi.OWNER) == CDI_OWNER:
                    cdi.remove_spec(path)
        if released:
            log.info("released %d reservations no prepared claim holds", released)
        return released


class DraService:
    """The DRAPlugin gRPC service over a :class:`Driver`, for one API version's messages
    (v1 and v1beta1 have the same shapes under different packages)."""

    def __init__(self, driver: Driver, pb2: Any) -> None:
        self.driver = driver
        self.pb2 = pb2

    def _devices(self, outcome: Outcome) -> list[Any]:
        return [self.pb2.Device(request_names=list(d.request_names), pool_name=d.pool, device_name=d.device,
                                cdi_device_ids=list(d.cdi_device_ids)) for d in outcome.devices]

    def NodePrepareResources(self, request: Any, context: grpc.ServicerContext) -> Any:
        out = self.pb2.NodePrepareResourcesResponse()
        for claim in request.claims:
            outcome = self.driver.prepare(ClaimRef(claim.namespace, claim.uid, claim.name))
            out.claims[claim.uid].CopyFrom(self.pb2.NodePrepareResourceResponse(
                devices=self._devices(outcome), error=outcome.error))
        return out

    def NodeUnprepareResources(self, request: Any, context: grpc.ServicerContext) -> Any:
        out = self.pb2.NodeUnprepareResourcesResponse()
        for claim in request.claims:
            outcome = self.driver.unprepare(ClaimRef(claim.namespace, claim.uid, claim.name))
            out.claims[claim.uid].CopyFrom(self.pb2.NodeUnprepareResourceResponse(error=outcome.error))
        return out

