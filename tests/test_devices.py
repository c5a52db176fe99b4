"""Device backends: the GPU catalog, the simulator's accounting, and backend selection."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from gpuos.devices.catalog import lookup, match_nvml_name
from gpuos.devices.nvml import NvmlBackend, nvml_gpu_count
from gpuos.devices.select import open_backend
from gpuos.devices.sim import SimBackend, parse_spec
from gpuos.errors import BackendError, InvalidArgument
from gpuos.units import GiB

# Live pids: the simulator, like a driver, forgets processes that do not exist.
ME, PARENT = os.getpid(), os.getppid()

# -- spec parsing ---------------------------------------------------------------------------------


def test_a_spec_lists_count_times_model_groups_in_index_order() -> None:
    assert [m.name for m in parse_spec("1xA100-40GB,2xL4")] == ["A100-40GB", "L4", "L4"]


def test_model_names_are_case_insensitive() -> None:
    assert [m.name for m in parse_spec("2xh100-80gb")] == ["H100-80GB", "H100-80GB"]


def test_an_unknown_model_is_refused_with_the_known_models_listed() -> None:
    with pytest.raises(InvalidArgument, match="B200.*H100-80GB") as caught:
        parse_spec("1xB200")
    assert caught.value.field == "sim_gpus"


@pytest.mark.parametrize("count", ["0", "-1", "65"])
def test_a_count_outside_1_to_64_is_refused(count: str) -> None:
    with pytest.raises(InvalidArgument, match="1..64"):
        parse_spec(f"{count}xL4")


@pytest.mark.parametrize("spec", ["", "H100-80GB", "2H100", "2xL4,", "x L4", "2xL4;1xT4"])
def test_a_malformed_spec_is_refused(spec: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_spec(spec)
    assert caught.value.field == "sim_gpus"


# -- catalog --------------------------------------------------------------------------------------


def test_h100_80gb_has_132_sms_and_a_whole_gpu_7g_80gb_profile() -> None:
    h100 = lookup("H100-80GB")
    assert h100 is not None and h100.sm_count == 132 and h100.memory_bytes == 80 * GiB
    whole = next(p for p in h100.mig_profiles if p.name == "7g.80gb")
    assert (whole.slices, whole.memory_slices, whole.max_count, whole.placements) == (7, 8, 1, (0,))


def test_a100_40gb_has_1g_5gb_but_no_1g_20gb() -> None:
    a100 = lookup("A100-40GB")
    assert a100 is not None and a100.sm_count == 108
    names = {p.name for p in a100.mig_profiles}
    assert "1g.5gb" in names and "1g.20gb" not in names


def test_mig_start_slots_follow_nvidias_placement_table() -> None:
    a100 = lookup("A100-80GB")
    assert a100 is not None
    starts = {p.name: p.placements for p in a100.mig_profiles}
    assert starts == {
        "1g.10gb": (0, 1, 2, 3, 4, 5, 6),
        "1g.20gb": (0, 2, 4, 6),
        "2g.20gb": (0, 2, 4),
        "3g.40gb": (0, 4),
        "4g.40gb": (0,),
        "7g.80gb": (0,),
    }


def test_l4_has_no_mig() -> None:
    l4 = lookup("L4")
    assert l4 is not None and l4.sm_count == 58 and not l4.mig_profiles


def test_nvml_product_names_map_to_catalog_models() -> None:
    assert [
        m.name if m else None
        for m in map(
            match_nvml_name,
            [
                "NVIDIA H100 80GB HBM3",
                "NVIDIA A100-SXM4-80GB",
                "NVIDIA A10",
                "Tesla T4",
                "NVIDIA L40S",
                "Quadro",
            ],
        )
    ] == ["H100-80GB", "A100-80GB", "A10", "T4", "L40S", None]


# -- simulated GPUs -------------------------------------------------------------------------------


def test_simulated_gpus_have_stable_uuids_and_catalog_facts() -> None:
    first, again = SimBackend("1xA100-40GB,1xL4").devices(), SimBackend("1xA100-40GB,1xL4").devices()
    assert [d.uuid for d in first] == [d.uuid for d in again]
    assert len({d.uuid for d in first}) == 2 and all(d.uuid.startswith("GPU-sim-") for d in first)
    assert [(d.index, d.model, d.sm_count, d.mig_capable) for d in first] == [
        (0, "A100-40GB", 108, True),
        (1, "L4", 58, False),
    ]


def test_an_idle_gpu_reports_no_memory_no_load_and_no_processes() -> None:
    (status,) = SimBackend("1xH100-80GB").status()
    assert (status.healthy, status.utilization_pct, status.memory_used, status.processes) == (
        True,
        0.0,
        0,
        (),
    )


def test_attached_processes_add_their_memory_and_compute() -> None:
    sim = SimBackend("1xH100-80GB")
    sim.attach(0, ME, 10 * GiB, 250)
    sim.attach(0, PARENT, 5 * GiB, 500)
    (status,) = sim.status()
    assert status.memory_used == 15 * GiB and status.utilization_pct == 75.0
    assert [(p.pid, p.memory_used) for p in status.processes] == sorted([(ME, 10 * GiB), (PARENT, 5 * GiB)])


def test_utilisation_is_capped_at_100_percent() -> None:
    sim = SimBackend("1xL4")
    sim.attach(0, ME, GiB, 1000)
    sim.attach(0, PARENT, GiB, 1000)
    assert sim.status()[0].utilization_pct == 100.0


def test_temperature_and_power_rise_with_load() -> None:
    sim = SimBackend("1xH100-80GB")
    idle = sim.status()[0]
    sim.attach(0, ME, GiB, 1000)
    busy = sim.status()[0]
    assert (
        idle.temperature_c is not None
        and busy.temperature_c is not None
        and busy.temperature_c > idle.temperature_c
    )
    assert idle.power_w is not None and busy.power_w is not None and busy.power_w > idle.power_w


def test_a_detached_process_no_longer_counts() -> None:
    sim = SimBackend("1xH100-80GB")
    sim.attach(0, ME, 10 * GiB, 500)
    sim.detach(0, ME)
    assert (sim.status()[0].memory_used, sim.status()[0].processes) == (0, ())


def test_a_paused_process_keeps_its_memory_but_uses_no_compute() -> None:
    sim = SimBackend("1xH100-80GB")
    sim.attach(0, ME, 10 * GiB, 500)
    sim.set_paused(0, ME, True)
    paused = sim.status()[0]
    sim.set_paused(0, ME, False)
    resumed = sim.status()[0]
    assert (paused.memory_used, paused.utilization_pct) == (10 * GiB, 0.0)
    assert resumed.utilization_pct == 50.0


def test_a_process_that_has_exited_is_dropped_from_status() -> None:
    sim = SimBackend("1xH100-80GB")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    sim.attach(0, child.pid, 4 * GiB, 500)
    child.wait()
    (status,) = sim.status()
    assert (status.memory_used, status.processes) == (0, ())


def test_a_process_can_be_made_to_grow_past_its_share() -> None:
    sim = SimBackend("1xH100-80GB")
    sim.attach(0, ME, 10 * GiB, 250)
    sim.set_process_memory(0, ME, 12 * GiB)
    assert sim.status()[0].processes[0].memory_used == 12 * GiB


def test_a_failed_gpu_is_unhealthy_until_restored() -> None:
    sim = SimBackend("2xL4")
    sim.fail_device(1)
    failed = [s.healthy for s in sim.status()]
    sim.restore_device(1)
    assert failed == [True, False] and all(s.healthy for s in sim.status())


def test_a_gpu_index_out_of_range_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="GPUs are 0..1"):
        SimBackend("2xL4").attach(2, 1, GiB, 100)


def test_concurrent_attach_and_detach_leave_consistent_accounting() -> None:
    sim = SimBackend("1xH100-80GB")

    def churn(base: int) -> None:
        for pid in range(base, base + 200):
            sim.attach(0, pid, GiB, 1)
            sim.detach(0, pid)

    threads = [threading.Thread(target=churn, args=(1_000_000 + i * 1000,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sim.status()[0].processes == ()


def test_mig_instances_are_created_where_nvidia_allows_and_destroyed() -> None:
    sim = SimBackend("1xH100-80GB")
    a = sim.create_mig_instance(0, "3g.40gb", 0)
    b = sim.create_mig_instance(0, "3g.40gb", 4)
    assert a.uuid.startswith("MIG-") and a.uuid != b.uuid
    assert [(m.profile, m.start) for m in sim.mig_instances(0)] == [("3g.40gb", 0), ("3g.40gb", 4)]
    sim.destroy_mig_instance(0, a.uuid)
    assert [m.uuid for m in sim.mig_instances(0)] == [b.uuid]


@pytest.mark.parametrize(("profile", "start"), [("3g.40gb", 2), ("1g.10gb", 4), ("9g.90gb", 0)])
def test_a_mig_instance_nvidia_would_refuse_is_refused(profile: str, start: int) -> None:
    sim = SimBackend("1xH100-80GB")
    sim.create_mig_instance(0, "3g.40gb", 4)
    with pytest.raises(BackendError):
        sim.create_mig_instance(0, profile, start)


def test_a_gpu_without_mig_refuses_mig_instances() -> None:
    with pytest.raises(BackendError, match="does not support MIG"):
        SimBackend("1xL4").create_mig_instance(0, "1g.10gb", 0)


def test_the_simulator_offers_its_mps_stand_in() -> None:
    assert SimBackend("1xL4").mps_control_command()[-1] == "gpuos.devices.sim_mps"


# -- choosing a backend ---------------------------------------------------------------------------

no_gpu = pytest.mark.skipif(nvml_gpu_count() > 0, reason="this machine has an NVIDIA GPU")


@no_gpu
def test_auto_falls_back_to_the_simulator_and_says_why() -> None:
    backend, reason = open_backend("auto", "1xL4")
    assert backend.name == "sim" and [d.model for d in backend.devices()] == ["L4"]
    assert "no NVIDIA GPU" in reason


def test_the_default_simulated_gpus_are_two_h100s() -> None:
    backend, reason = open_backend("sim", None)
    assert [d.model for d in backend.devices()] == ["H100-80GB", "H100-80GB"] and "2xH100-80GB" in reason


def test_an_unknown_backend_kind_is_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        open_backend("rocm", None)
    assert caught.value.field == "backend"


@no_gpu
def test_the_nvml_backend_raises_a_backend_error_without_a_gpu() -> None:
    with pytest.raises(BackendError, match="NVML"):
        NvmlBackend()


@no_gpu
def test_asking_for_nvml_without_a_gpu_does_not_fall_back() -> None:
    with pytest.raises(BackendError):
        open_backend("nvml", "1xL4")
