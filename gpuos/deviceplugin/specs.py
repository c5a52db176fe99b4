"""The device plugin's CDI spec files: one per allocation, swept once its reservation is gone.

A file is named after its allocation's first device ID (sorted) and annotated with the plugin as
its owner and the gpuosd reservation it carries. A reservation can end without the plugin
releasing it (``gpuosctl cancel``, a gpuosd restart that lost it, the reconciler), so every
reconciliation pass removes the plugin's files whose reservation gpuosd no longer holds. Files
of other writers in the directory (the DRA driver's, NVIDIA's) are never touched.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterable, Sequence

from gpuos import cdi
from gpuos.v1 import devices_pb2

log = logging.getLogger("gpuos.deviceplugin")

OWNER = "gpuos-device-plugin"
RESERVATION = "gpuos.io/reservation"


class SpecFiles:
    """The plugin's spec files in ``cdi_dir``."""

    def __init__(self, cdi_dir: str) -> None:
        self.cdi_dir = cdi_dir
        # Writes and sweeps one at a time: a sweep removes a file only as it read it, never one an
        # allocation rewrote for a newer reservation meanwhile.
        self._lock = threading.Lock()

    def write(self, ids: Sequence[str], reservation: devices_pb2.Reservation, nodes: Sequence[str]) -> str:
        """One spec file for one allocation's device IDs: a CDI device carrying the reservation's
        environment, mounts and ``nodes``, file and device named after the first ID; the qualified
        name to give the kubelet.

        A spec named after another of the IDs is the previous holder's, which gpuosd released as this
        reservation took the ID over: removed, so no file of a released reservation stays behind it.
        """
        name, *rest = sorted(ids)
        mounts = [cdi.Mount(m.host_path, m.container_path, m.read_only) for m in reservation.mounts]
        device = cdi.CdiDevice(name=name, env=dict(reservation.env), mounts=mounts, device_nodes=list(nodes))
        with self._lock:
            cdi.write_spec(self.cdi_dir, cdi.DEFAULT_CLASS, [device], name=name,
                           annotations={cdi.OWNER: OWNER, RESERVATION: reservation.job_id})
            self._remove(rest)
        return cdi.qualified(name)

    def _remove(self, ids: Iterable[str]) -> None:
        for device_id in ids:
            try:
                cdi.remove_spec(cdi.spec_path(self.cdi_dir, device_id))
            except cdi.CdiError:
                continue  # a key that was never a CDI name never had a spec

    def sweep(self, live: Callable[[], Collection[str]]) -> list[str]:
        """Remove the plugin's files whose reservation is not among ``live()`` (job ids); the paths
        removed.

        ``live`` is asked after the files are read: a file is written only once its reservation
        exists, so a file whose reservation still exists is always among the answer. When ``live``
        raises, nothing is removed and the exception propagates.
        """
        with self._lock:
            owned = {}
            for path in cdi.specs(self.cdi_dir).values():
                notes = cdi.read_annotations(path)
                if notes.get(cdi.OWNER) == OWNER and notes.get(RESERVATION):
                    owned[path] = notes[RESERVATION]
            if not owned:
                return []
            alive = set(live())
            gone = [path for path, job in owned.items() if job not in alive]
            for path in gone:
                cdi.remove_spec(path)
        for path in gone:
            log.info("removed CDI spec %s: its reservation %s is gone", path, owned[path])
        return gone
