"""CDI spec files: what a container runtime reads for a gpuos device."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from gpuos import cdi
from gpuos.cdi import CdiDevice, CdiError, Mount


def share(name: str = "claim-1234-gpu0") -> CdiDevice:
    return CdiDevice(
        name=name,
        env={"CUDA_VISIBLE_DEVICES": "GPU-1", "CUDA_MPS_PIPE_DIRECTORY": "/run/gpuos/mps/0"},
        mounts=[Mount("/run/gpuos/mps/0", "/run/gpuos/mps/0"), Mount("/dev/shm/gpuos", "/dev/shm", read_only=True)],
        device_nodes=["/dev/nvidia0", "/dev/nvidiactl"],
    )


def test_a_spec_file_holds_the_devices_edits_in_cdi_0_6_form(tmp_path: Path) -> None:
    path = cdi.write_spec(str(tmp_path), devices=[share()], name="claim-1234")
    assert path == str(tmp_path / "gpuos.io-gpu_claim-1234.json")
    document = json.loads(Path(path).read_text())
    assert document["cdiVersion"] == "0.6.0" and document["kind"] == "gpuos.io/gpu"
    (device,) = document["devices"]
    edits = device["containerEdits"]
    assert device["name"] == "claim-1234-gpu0"
    assert edits["env"] == ["CUDA_MPS_PIPE_DIRECTORY=/run/gpuos/mps/0", "CUDA_VISIBLE_DEVICES=GPU-1"]
    assert edits["deviceNodes"] == [{"path": "/dev/nvidia0"}, {"path": "/dev/nvidiactl"}]
    assert [(m["hostPath"], m["containerPath"], m["type"]) for m in edits["mounts"]] == [
        ("/run/gpuos/mps/0", "/run/gpuos/mps/0", "bind"), ("/dev/shm/gpuos", "/dev/shm", "bind")]
    assert "ro" in edits["mounts"][1]["options"] and "rw" in edits["mounts"][0]["options"]
    assert cdi.read_spec(path) == [CdiDevice(share().name, dict(share().env), tuple(share().mounts),
                                             tuple(share().device_nodes))]


def test_the_file_is_world_readable_and_replaced_whole(tmp_path: Path) -> None:
    path = cdi.write_spec(str(tmp_path), devices=[share()], name="owner")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    cdi.write_spec(str(tmp_path), devices=[share("other-dev")], name="owner")
    assert [d.name for d in cdi.read_spec(path)] == ["other-dev"]
    assert sorted(os.listdir(tmp_path)) == ["gpuos.io-gpu_owner.json"]  # no temporary left behind


def test_a_failed_write_leaves_the_previous_spec(tmp_path: Path) -> None:
    path = cdi.write_spec(str(tmp_path), devices=[share()], name="owner")
    with pytest.raises(CdiError, match="env"):
        cdi.write_spec(str(tmp_path), devices=[CdiDevice("x", env={"BAD=KEY": "1"})], name="owner")
    assert [d.name for d in cdi.read_spec(path)] == [share().name]


def test_remove_spec_says_whether_there_was_one(tmp_path: Path) -> None:
    path = cdi.write_spec(str(tmp_path), devices=[share()], name="owner")
    assert cdi.remove_spec(path) is True
    assert cdi.remove_spec(path) is False
    assert not os.path.exists(path)


def test_qualified_names_are_vendor_class_equals_name() -> None:
    assert cdi.qualified("abc-0") == "gpuos.io/gpu=abc-0"
    assert cdi.qualified("MIG-1:0", "gpuos.io/mig") == "gpuos.io/mig=MIG-1:0"


@pytest.mark.parametrize("name", ["", "-x", "x-", "a/b", "a=b", "a b", "ünï"])
def test_bad_device_names_are_refused_naming_the_argument(name: str) -> None:
    with pytest.raises(CdiError, match="name"):
        cdi.qualified(name)


@pytest.mark.parametrize("vendor_class", ["gpu", "gpuos.io/", "Gpuos.io/gpu", "gpuos.io/a/b", "gpuos..io/gpu",
                                          "gpuos.io/-gpu"])
def test_bad_vendor_classes_are_refused(vendor_class: str) -> None:
    with pytest.raises(CdiError, match="vendor_class"):
        cdi.qualified("x", vendor_class)


def test_a_spec_needs_devices_with_unique_names_and_absolute_paths(tmp_path: Path) -> None:
    with pytest.raises(CdiError, match="at least one"):
        cdi.write_spec(str(tmp_path), devices=[], name="o")
    with pytest.raises(CdiError, match="unique"):
        cdi.write_spec(str(tmp_path), devices=[share(), share()], name="o")
    with pytest.raises(CdiError, match="device_nodes"):
        cdi.write_spec(str(tmp_path), devices=[CdiDevice("x", device_nodes=["dev/nvidia0"])], name="o")
    with pytest.raises(CdiError, match="mounts"):
        cdi.write_spec(str(tmp_path), devices=[CdiDevice("x", mounts=[Mount("rel", "/abs")])], name="o")
    with pytest.raises(CdiError, match="spec name"):
        cdi.write_spec(str(tmp_path), devices=[share()], name="../escape")
    assert os.listdir(tmp_path) == []


def test_specs_lists_the_owners_of_a_class_in_a_directory(tmp_path: Path) -> None:
    a = cdi.write_spec(str(tmp_path), devices=[share()], name="uid-a")
    b = cdi.write_spec(str(tmp_path), "gpuos.io/mig", devices=[share()], name="uid-b")
    (tmp_path / "vendor.com-x_uid-c.json").write_text("{}")
    assert cdi.specs(str(tmp_path)) == {"uid-a": a}
    assert cdi.specs(str(tmp_path), "gpuos.io/mig") == {"uid-b": b}
    assert cdi.specs(str(tmp_path / "absent")) == {}


def test_annotations_are_written_at_spec_level_and_read_back(tmp_path: Path) -> None:
    path = cdi.write_spec(str(tmp_path), devices=[share()], name="owner", annotations={cdi.OWNER: "me", "a.io/b": "c"})
    assert json.loads(Path(path).read_text())["annotations"] == {"a.io/b": "c", cdi.OWNER: "me"}
    assert cdi.read_annotations(path) == {"a.io/b": "c", cdi.OWNER: "me"}
    (tmp_path / "not-json.json").write_text("{")
    assert cdi.read_annotations(str(tmp_path / "not-json.json")) == {}
    assert cdi.read_annotations(str(tmp_path / "gone.json")) == {}


# -- MIG capability device nodes -----------------------------------------------------------------

MIG_MINORS = """config 1
monitor 2
gpu0/gi0/access 3
gpu0/gi0/ci0/access 4
gpu1/gi2/access 21
gpu1/gi2/ci0/access 22
gpu1/gi2/ci1/access 23
"""


def mig_host(tmp_path: Path, caps: tuple[int, ...] = (3, 4, 21, 22, 23)) -> tuple[Path, Path]:
    dev = tmp_path / "dev"
    (dev / "nvidia-caps").mkdir(parents=True)
    for name in ("nvidia0", "nvidia1", "nvidiactl", *(f"nvidia-caps/nvidia-cap{n}" for n in caps)):
        (dev / name).touch()
    table = tmp_path / "mig-minors"
    table.write_text(MIG_MINORS)
    return dev, table


def test_the_mig_minors_table_maps_capability_names_to_minors(tmp_path: Path) -> None:
    _, table = mig_host(tmp_path)
    assert cdi.read_mig_minors(str(table)) == {
        "config": 1, "monitor": 2, "gpu0/gi0/access": 3, "gpu0/gi0/ci0/access": 4, "gpu1/gi2/access": 21,
        "gpu1/gi2/ci0/access": 22, "gpu1/gi2/ci1/access": 23}
    assert cdi.read_mig_minors(str(tmp_path / "absent")) is None


def test_a_slice_gets_its_gpu_instances_and_its_compute_instances_capability_nodes(tmp_path: Path) -> None:
    dev, table = mig_host(tmp_path)
    assert cdi.mig_capability_nodes(1, 2, 1, str(dev), str(table)) == [
        "/dev/nvidia-caps/nvidia-cap21", "/dev/nvidia-caps/nvidia-cap23"]
    assert cdi.mig_capability_nodes(0, 0, 0, str(dev), str(table)) == [
        "/dev/nvidia-caps/nvidia-cap3", "/dev/nvidia-caps/nvidia-cap4"]


def test_without_the_table_no_capability_nodes_are_given_and_nothing_fails(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dev, _ = mig_host(tmp_path)
    with caplog.at_level("DEBUG", logger="gpuos.cdi"):
        assert cdi.mig_capability_nodes(0, 0, 0, str(dev), str(tmp_path / "absent")) == []
    assert [r.levelname for r in caplog.records] == ["DEBUG"] and "absent" in caplog.records[0].getMessage()


def test_a_capability_the_table_lacks_or_whose_node_is_missing_is_left_out_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dev, table = mig_host(tmp_path, caps=(21,))
    with caplog.at_level("WARNING", logger="gpuos.cdi"):
        assert cdi.mig_capability_nodes(1, 2, 1, str(dev), str(table)) == ["/dev/nvidia-caps/nvidia-cap21"]
        assert cdi.mig_capability_nodes(1, 5, 0, str(dev), str(table)) == []
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 and "nvidia-cap23" in messages[0] and "gpu1/gi5/access" in messages[1]


def test_a_reservations_nodes_add_the_capabilities_of_its_mig_slice_only(tmp_path: Path) -> None:
    from gpuos.v1 import devices_pb2

    dev, table = mig_host(tmp_path)
    whole = devices_pb2.Reservation(job_id="j1")
    assert cdi.reservation_nodes(whole, [0, 1], str(dev), str(table)) == ["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl"]
    mig = devices_pb2.Reservation(job_id="j2", mig_instance=devices_pb2.MigInstanceInfo(
        profile="1g.10gb", start=0, uuid="MIG-x", gpu_instance_id=2, compute_instance_id=1))
    assert cdi.reservation_nodes(mig, [1], str(dev), str(table)) == [
        "/dev/nvidia1", "/dev/nvidiactl", "/dev/nvidia-caps/nvidia-cap21", "/dev/nvidia-caps/nvidia-cap23"]
    assert cdi.reservation_nodes(mig, [-1], str(dev), str(table)) == []  # a simulated GPU has no nodes
