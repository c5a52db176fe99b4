"""The job model's vocabulary: one spelling for each partition kind and QoS class."""

from __future__ import annotations

import pytest

from gpuos.errors import InvalidArgument
from gpuos.jobs import LATENCY_CLASSES, Partition, PartitionKind, Placement, Qos


@pytest.mark.parametrize("text", ["exclusive", "mps", "timeslice", "mig:3g.40gb", "mig:1g.10gb+me"])
def test_every_partition_spelling_reads_back_as_itself(text: str) -> None:
    assert str(Partition.parse(text)) == text


@pytest.mark.parametrize("text", ["", "bogus", "mps:3g.40gb", "mig", "mig:"])
def test_a_partition_spelled_otherwise_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        Partition.parse(text)


def test_a_placement_shares_its_gpu_by_its_partition_kind() -> None:
    assert Placement(devices=(0,)).sharing == ""
    assert Placement(devices=(0,), partition=Partition(PartitionKind.MPS)).sharing == "mps"
    assert Placement(devices=(0,), partition=Partition(PartitionKind.MIG, "3g.40gb")).sharing == "mig"


@pytest.mark.parametrize(("text", "qos"), [("LS", Qos.LS), (" ls ", Qos.LS), ("be", Qos.BE), ("", Qos.BE)])
def test_a_user_submits_one_of_two_qos_classes_in_any_case(text: str, qos: Qos) -> None:
    assert Qos.parse(text) is qos


@pytest.mark.parametrize("text", ["Guaranteed", "Burstable", "GOLD"])
def test_the_api_refuses_qos_classes_that_only_traces_carry(text: str) -> None:
    with pytest.raises(InvalidArgument, match="LS .latency-sensitive., BE .best-effort."):
        Qos.parse(text)


def test_trace_qos_classes_rank_onto_latency_sensitive_and_best_effort() -> None:
    assert [Qos.rank_of(t) for t in ("LS", "Guaranteed", "Burstable", "BE")] == [2, 2, 1, 0]
    assert Qos.rank_of("Unknown") == 1
    assert LATENCY_CLASSES == {"LS", "Guaranteed"}
