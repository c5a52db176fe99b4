"""While other tenants are calling, one tenant's streams send at a bounded rate; alone, at full speed."""

from __future__ import annotations

import time

from gpuos.api.fairness import StreamGate


def time_messages(gate: StreamGate, tenant: str, count: int) -> float:
    started = time.monotonic()
    for _ in range(count):
        gate.pace(tenant)
    return time.monotonic() - started


def test_a_tenant_alone_is_never_paced() -> None:
    gate = StreamGate(per_tenant=8, total=64, contended_messages_per_second=100)
    gate.note_call("flood")
    assert time_messages(gate, "flood", 200) < 0.5  # 2 s at the contended rate


def test_a_tenant_is_paced_while_another_tenant_calls() -> None:
    gate = StreamGate(per_tenant=8, total=64, contended_messages_per_second=100)
    gate.note_call("flood")
    gate.note_call("victim")
    # A burst of 5 passes at once; the other 45 come at 100 a second.
    assert time_messages(gate, "flood", 50) >= 0.4


def test_pacing_ends_when_the_other_tenant_has_been_quiet_for_a_while(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    gate = StreamGate(per_tenant=8, total=64, contended_messages_per_second=100)
    gate.note_call("victim")
    later = time.monotonic() + 5
    monkeypatch.setattr(time, "monotonic", lambda: later)
    monkeypatch.setattr(time, "sleep", lambda s: (_ for _ in ()).throw(AssertionError(f"paced {s}s")))
    for _ in range(100):
        gate.pace("flood")


def test_a_rate_of_zero_turns_pacing_off() -> None:
    gate = StreamGate(per_tenant=8, total=64, contended_messages_per_second=0)
    gate.note_call("victim")
    assert time_messages(gate, "flood", 1000) < 0.5
