"""Why a job waits, end to end: a real gpuosd on the simulated backend says why a pending job
has not started, in `gpuosctl get` and its JSON, and says nothing once the job runs."""

from __future__ import annotations

import json

import pytest

from gpuos.cli.main import main
from gpuos.client import Client
from gpuos.daemon.daemon import Daemon
from gpuos.v1 import jobs_pb2
from tests.conftest import wait_for

SLEEP = ["sleep", "60"]


def _fill_both_gpus(client: Client, **resources: object) -> list[str]:
    ids = [client.submit(SLEEP, name=f"filler{k}", **resources).id for k in range(2)]  # type: ignore[arg-type]
    for job_id in ids:
        wait_for(lambda job_id=job_id: client.get(job_id).state == jobs_pb2.RUNNING)
    return ids


def _waiting(client: Client, job_id: str) -> jobs_pb2.WaitReason:
    return wait_for(lambda: client.get(job_id).waiting if client.get(job_id).HasField("waiting") else None)


def test_a_job_behind_two_busy_gpus_says_they_are_busy(client: Client) -> None:
    _fill_both_gpus(client)
    waiting = _waiting(client, client.submit(SLEEP, name="third").id)
    assert waiting.kind == "busy"
    assert waiting.message == "needs an idle GPU; the most idle on one node is 0; 2 held whole"


def test_a_mig_slice_with_every_layout_full_says_so(client: Client) -> None:
    _fill_both_gpus(client, mig_profile="7g.80gb")
    waiting = _waiting(client, client.submit(SLEEP, name="slice", mig_profile="3g.40gb").id)
    assert waiting.kind == "mig-full"
    assert "no GPU has room for a 3g.40gb slice" in waiting.message


def test_a_job_that_starts_no_longer_shows_a_reason(client: Client) -> None:
    fillers = _fill_both_gpus(client)
    third = client.submit(SLEEP, name="third").id
    _waiting(client, third)
    client.cancel(fillers[0])
    wait_for(lambda: client.get(third).state == jobs_pb2.RUNNING)
    assert not client.get(third).HasField("waiting")
    assert all(not j.HasField("waiting") for j in client.list())


def test_gpuosctl_get_prints_the_reason_and_its_json_carries_it(
    daemon: Daemon, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill_both_gpus(client)
    third = client.submit(SLEEP, name="third").id
    _waiting(client, third)
    socket = ["--socket", daemon.config.socket]
    assert main([*socket, "get", third]) == 0
    assert "waiting: needs an idle GPU; the most idle on one node is 0; 2 held whole" in capsys.readouterr().out
    assert main([*socket, "-o", "json", "get", third]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["waiting"] == {"kind": "busy",
                                "message": "needs an idle GPU; the most idle on one node is 0; 2 held whole"}
