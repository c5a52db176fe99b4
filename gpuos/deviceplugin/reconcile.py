"""Reconciliation with the kubelet's PodResources API: release the reservations of containers
that no longer exist.

The device-plugin API has no deallocate call: when a pod ends the kubelet just forgets its
devices. So every few seconds the plugin asks the kubelet (``v1.PodResourcesLister.List`` on
``/var/lib/kubelet/pod-resources/kubelet.sock``) which device IDs existing containers hold, and
releases the gpuos reservations named ``k8s:*`` none of whose keys any container holds. Only an
answer releases anything: when the call fails, nothing is released. A reservation must also be
seen unclaimed twice, ``grace`` seconds apart, because the kubelet records a container's devices
only after ``Allocate`` has answered: a List in between would not show them yet.

Each pass then sweeps the plugin's CDI spec files whose reservation gpuosd no longer holds,
however it ended (:mod:`gpuos.deviceplugin.specs`); that asks only gpuosd, so it is done when the
kubelet does not answer too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import grpc

from gpuos.client import ApiError, Client
from gpuos.deviceplugin import resources
from gpuos.deviceplugin.podresources import api_pb2, api_pb2_grpc
from gpuos.deviceplugin.specs import SpecFiles

log = logging.getLogger("gpuos.deviceplugin")

POD_RESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
RESERVATION_PREFIX = "k8s:"
LIST_TIMEOUT = 5.0


@dataclass(frozen=True)
class Held:
    """A reservation of the plugin's, as reconciliation needs it."""

    job_id: str
    keys: tuple[str, ...]


def in_use(response: api_pb2.ListPodResourcesResponse, prefix: str = resources.PREFIX) -> set[str]:
    """The device IDs of gpuos resources (``prefix``) that the listed containers hold."""
    return {
        device_id
        for pod in response.pod_resources
        for container in pod.containers
        for devices in container.devices
        if devices.resource_name.startswith(prefix)
        for device_id in devices.device_ids
    }


def stale(held: Sequence[Held], used: set[str], unclaimed_since: Mapping[str, float], now: float,
          grace: float) -> tuple[list[Held], dict[str, float]]:
    """The reservations to release, and when each still-unclaimed one was first seen unclaimed.

    A reservation is released once no key of it has been in ``used`` since ``grace`` seconds
    ago (``unclaimed_since`` says since when, from earlier calls); one a container holds again
    starts over.
    """
    release: list[Held] = []
    since: dict[str, float] = {}
    for reservation in held:
        if used.intersection(reservation.keys):
            continue
        first = unclaimed_since.get(reservation.job_id, now)
        if now - first >= grace:
            release.append(reservation)
        else:
            since[reservation.job_id] = first
    return release, since


class Reconciler:
    """Releases the reservations of containers the kubelet no longer has, and sweeps ``specs``
    (the plugin's CDI spec files; None: none to sweep)."""

    def __init__(self, client: Client, socket_path: str = POD_RESOURCES_SOCKET, grace: float = 3.0,
                 released: Callable[[], object] | None = None, specs: SpecFiles | None = None) -> None:
        self.client = client
        self.socket_path = socket_path
        self.grace = grace
        # Told after a pass released any reservation (the plugin refreshes what it advertises).
        self.released = released
        self.specs = specs
        self._unclaimed: dict[str, float] = {}

    def list_in_use(self) -> set[str] | None:
        """The device IDs containers hold now, or None when the kubelet did not answer."""
        try:
            with grpc.insecure_channel(f"unix:{self.socket_path}") as channel:
                response = api_pb2_grpc.PodResourcesListerStub(channel).List(
                    api_pb2.ListPodResourcesRequest(), timeout=LIST_TIMEOUT)
        except grpc.RpcError as exc:
            log.warning("PodResources List failed (%s); releasing nothing this time",
                        exc.details() or exc.code())  # type: ignore[attr-defined]
            return None
        return in_use(response)

    def once(self, now: float) -> list[str]:
        """One reconciliation at time ``now``, then a sweep of the spec files; the job ids of the
        reservations it released."""
        done = self._release(now)
        if done and self.released is not None:
            self.released()
        if self.specs is not None:
            try:
                self.specs.sweep(lambda: {r.job_id for r in self.client.reservations(RESERVATION_PREFIX)})
            except ApiError as exc:
                log.warning("cannot list gpuosd's reservations (%s); sweeping no CDI specs this time", exc.details)
        return done

    def _release(self, now: float) -> list[str]:
        used = self.list_in_use()
        if used is None:
            return []
        try:
            held = [Held(r.job_id, tuple(r.keys)) for r in self.client.reservations(RESERVATION_PREFIX)]
        except ApiError as exc:
            log.warning("cannot list gpuosd's reservations (%s); releasing nothing this time", exc.details)
            return []
        release, self._unclaimed = stale(held, used, self._unclaimed, now, self.grace)
        done = []
        for reservation in release:
            try:
                self.client.release(reservation.keys)
            except ApiError as exc:
                log.warning("could not release reservation %s: %s", reservation.job_id, exc.details)
                continue
            log.info("released reservation %s: no container holds %s any more", reservation.job_id,
                     ", ".join(reservation.keys))
            done.append(reservation.job_id)
        return done
