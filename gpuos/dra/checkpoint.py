"""The DRA driver's checkpoint: the claims it prepared (or began to), kept across restarts.

The kubelet calls NodePrepareResources again for a claim whenever it is unsure (after its own or
the plugin's restart); the answer must be the same devices, without reserving twice. So the
driver records a claim as *preparing* (with the reservation keys it will use) before it asks
gpuosd for anything, and as *prepared* (with the devices it answers) before it replies. One JSON
file under the state directory, replaced whole (temporary file, fsync, rename, fsync of the
directory), so a crash at any point leaves the old file or the new one.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass

from gpuos.files import write_atomic

VERSION = 1
FILENAME = "dra-checkpoint.json"
PREPARING, PREPARED = "preparing", "prepared"


class CheckpointError(RuntimeError):
    """The checkpoint file exists but cannot be read as one; the message names the file."""


@dataclass(frozen=True)
class PreparedDevice:
    """One device of the kubelet's answer: the claim's requests it serves, and its CDI devices."""

    request_names: tuple[str, ...]
    pool: str
    device: str
    cdi_device_ids: tuple[str, ...]


@dataclass(frozen=True)
class ClaimRecord:
    """A claim this driver prepared (``state`` PREPARED) or began to (PREPARING)."""

    uid: str
    namespace: str
    name: str
    state: str
    keys: tuple[str, ...] = ()
    job_ids: tuple[str, ...] = ()
    devices: tuple[PreparedDevice, ...] = ()
    cdi_spec: str = ""

    @property
    def held(self) -> tuple[str, ...]:
        """The published device names the claim holds (they stay published while it does)."""
        return tuple(sorted({d.device for d in self.devices}))

    def to_json(self) -> dict[str, object]:
        return {
            "uid": self.uid, "namespace": self.namespace, "name": self.name, "state": self.state,
            "keys": list(self.keys), "job_ids": list(self.job_ids), "cdi_spec": self.cdi_spec,
            # Derived, and ignored when read; written for drivers before it was, which read it.
            "held": list(self.held),
            "devices": [{"request_names": list(d.request_names), "pool": d.pool, "device": d.device,
                         "cdi_device_ids": list(d.cdi_device_ids)} for d in self.devices],
        }

    @staticmethod
    def from_json(data: dict[str, object]) -> ClaimRecord:
        devices = data.get("devices") or []
        assert isinstance(devices, list)
        return ClaimRecord(
            uid=str(data["uid"]), namespace=str(data["namespace"]), name=str(data["name"]), state=str(data["state"]),
            keys=tuple(data.get("keys") or ()),  # type: ignore[arg-type]
            job_ids=tuple(data.get("job_ids") or ()),  # type: ignore[arg-type]
            cdi_spec=str(data.get("cdi_spec") or ""),
            devices=tuple(PreparedDevice(tuple(d["request_names"]), d["pool"], d["device"], tuple(d["cdi_device_ids"]))
                          for d in devices),
        )


class Checkpoint:
    """The records of ``state_dir``'s checkpoint file, each change written through before it returns."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, FILENAME)
        self._lock = threading.Lock()
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        self._claims = self._load()

    def _load(self) -> dict[str, ClaimRecord]:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {self.path} cannot be read: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise CheckpointError(f"checkpoint {self.path} is not a version {VERSION} gpuos DRA checkpoint")
        try:
            records = [ClaimRecord.from_json(c) for c in data.get("claims", [])]
        except (KeyError, TypeError, AssertionError) as exc:
            raise CheckpointError(f"checkpoint {self.path} has a malformed claim: {exc}") from None
        return {r.uid: r for r in records}

    def _save(self) -> None:
        document = {"version": VERSION, "claims": [c.to_json() for c in sorted(self._claims.values(), key=lambda c: c.uid)]}
        write_atomic(self.path, json.dumps(document, indent=1, sort_keys=True))

    def get(self, uid: str) -> ClaimRecord | None:
        with self._lock:
            return self._claims.get(uid)

    def put(self, record: ClaimRecord) -> None:
        with self._lock:
            self._claims[record.uid] = record
            self._save()

    def remove(self, uid: str) -> None:
        with self._lock:
            if self._claims.pop(uid, None) is not None:
                self._save()

    def records(self) -> list[ClaimRecord]:
        with self._lock:
            return sorted(self._claims.values(), key=lambda c: c.uid)
