"""gpuosd starts a fraction the way its policy chose (Policy.share) on the simulated backend: a MIG
instance or a time-slice turn where the job asked only for a share, and never against a mode the
user pinned."""

from __future__ import annotations

import sys

from gpuos.client import Client
from gpuos.daemon.daemon import Daemon
from gpuos.policy_choice import PolicyChoice
from gpuos.scheduler import GpuView, JobView, Policy, Share, Snapshot
from gpuos.v1 import jobs_pb2
from tests.conftest import wait_for

PY = sys.executable
PRINT_ENV = [PY, "-c", "import os\nfor k, v in sorted(os.environ.items()):\n    print(f'{k}={v}')"]
SLEEP = [PY, "-c", "import time; time.sleep(60)"]


class Always(Policy):
    def __init__(self, share: Share) -> None:
        self.chosen = share
        self.name = f"always-{share.value}"

    def share(self, job: JobView, gpu: GpuView, snap: Snapshot) -> Share:
        return self.chosen


def deploy(daemon: Daemon, policy: Policy) -> None:
    daemon.controller.deploy(PolicyChoice(policy.name), policy)


def env_of(client: Client, job_id: str) -> dict[str, str]:
    out = b"".join(d for s, d in client.logs(job_id) if s == "stdout").decode()
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_a_fraction_its_policy_puts_on_mig_runs_in_its_own_instance(daemon: Daemon, client: Client) -> None:
    deploy(daemon, Always(Share.MIG))
    job = client.wait(client.submit(PRINT_ENV, gpu_fraction=0.25, memory="8GiB").id, timeout=30)
    assert job.state == jobs_pb2.SUCCEEDED
    assert job.placement.partition == "mig:2g.20gb"  # a quarter needs 2 of 7 compute slices
    assert env_of(client, job.id)["CUDA_VISIBLE_DEVICES"] == job.placement.mig_device_uuid
    wait_for(lambda: not client.devices().devices[job.placement.devices[0]].mig_instances)


def test_fractions_their_policy_time_slices_take_turns(daemon: Daemon, client: Client) -> None:
    deploy(daemon, Always(Share.TIMESLICE))
    a, b = (client.submit(SLEEP, gpu_fraction=0.5, gpu_types=["H100-80GB"]) for _ in range(2))
    wait_for(lambda: {client.get(j.id).state for j in (a, b)} == {jobs_pb2.RUNNING, jobs_pb2.PAUSED})
    ga, gb = client.get(a.id).placement, client.get(b.id).placement
    assert ga.partition == gb.partition == "timeslice" and ga.devices == gb.devices
    for j in (a, b):
        client.cancel(j.id)


def test_a_fraction_pinned_to_mps_stays_an_mps_client(daemon: Daemon, client: Client) -> None:
    deploy(daemon, Always(Share.MIG))
    job = client.wait(client.submit(PRINT_ENV, gpu_fraction=0.25, sharing="mps").id, timeout=30)
    assert job.placement.partition == "mps"
    assert env_of(client, job.id)["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"
