"""The process boundary between a candidate policy and its judge (agents/wire.py, agents/sandbox.py).

The cheat tests run with ``screen=False``: the source checks are a fast first filter, and these
tests show that the boundary alone stops each family of cheat (issue 12).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuos.agents import wire
from gpuos.agents.objectives import FRAGMENTATION_FLOOR, simulate
from gpuos.agents.sandbox import CandidateOutcome, load_policy_class, run_candidate
from gpuos.agents.workloads import STAGE1, load_workload
from gpuos.jobs import Resources
from gpuos.mig import Instance, MigProfile
from gpuos.scheduler.framework import schedule
from gpuos.scheduler.policies.fifo import Fifo
from gpuos.scheduler.sim import SimulationError
from gpuos.scheduler.sim.cluster import GPU_TYPES, NodeSpec
from gpuos.scheduler.sim.engine import Simulator
from gpuos.scheduler.sim.traces import Trace, TraceJob
from gpuos.scheduler.snapshot import GpuView, JobView, NodeView, Place, Preempt, Snapshot, Stint

GIB = 1 << 30
FIFO = "from gpuos.scheduler.policies.fifo import Fifo\nPOLICY = Fifo\n"
# Reaches the real builtins from a candidate whose builtins were cut down, with names built at
# run time (what the screen would refuse as written).
ESCAPE = '''
import operator
from gpuos.scheduler import Policy

_real = operator.attrgetter("__glo" + "bals__")(Policy.order)["__buil" + "tins__"]
_import = _real["__imp" + "ort__"]
'''


@pytest.fixture(scope="module")
def small() -> Trace:
    return load_workload(STAGE1[0])


@pytest.fixture(scope="module")
def fifo_run(small: Trace) -> dict[str, object]:
    return _comparable(simulate(small, "fifo").to_json())


def _comparable(run: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in run.items() if k != "wall_seconds"}


def _boundary(source: str, trace: Trace, screen: bool = False) -> CandidateOutcome:
    return run_candidate(source, [trace], filename="cheat.py", timeout=120, screen=screen)


# -- the schema ---------------------------------------------------------------------------------

names = st.text("abcxyz-0123456789", min_size=1, max_size=8)
ints = st.integers(-(1 << 62), 1 << 62)
floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
resources = st.builds(Resources, st.integers(0, 8), st.integers(0, 999), ints, names,
                      st.lists(names, max_size=2).map(tuple), st.sampled_from(["", "timeslice"]))
profiles = st.builds(MigProfile, names, st.integers(1, 7), ints, st.integers(1, 8), st.integers(1, 7),
                     st.lists(st.integers(0, 7), max_size=3).map(tuple))
gpus = st.builds(GpuView, st.integers(0, 15), names, ints, ints, ints, st.booleans(), names,
                 st.lists(profiles, max_size=2).map(tuple), st.integers(0, 7), st.lists(names, max_size=3).map(tuple),
                 st.sampled_from(["", "mps", "timeslice", "mig"]),
                 st.lists(st.builds(Instance, names, st.integers(0, 7)), max_size=2).map(tuple),
                 st.booleans(), floats, ints)
nodes = st.builds(NodeView, names, st.lists(gpus, max_size=3).map(tuple), ints, ints, st.booleans())
jobs = st.builds(JobView, names, resources, names, ints, names, floats, st.none() | floats, floats, floats, ints, ints,
                 names, st.lists(st.integers(0, 15), max_size=2).map(tuple), st.booleans(), ints, floats, floats,
                 st.lists(st.builds(Stint, floats, floats, floats), max_size=2).map(tuple), names, st.booleans(),
                 ints, names, st.none() | st.tuples(names, st.integers(0, 15)))


def _unique(views: list[JobView]) -> tuple[JobView, ...]:
    return tuple({j.id: j for j in views}.values())


snapshots = st.builds(Snapshot, floats, st.lists(nodes, max_size=3).map(tuple),
                      st.lists(jobs, max_size=4).map(_unique), st.lists(jobs, max_size=3).map(_unique))
decisions = st.one_of(
    st.builds(Place, names, names, st.lists(st.integers(-2, 15), max_size=3).map(tuple), ints, ints, names,
              st.integers(-1, 7), st.sampled_from(["", "mps", "timeslice", "mig"])),
    st.builds(Preempt, names, names),
)


def _through_json(data: object) -> object:
    return json.loads(json.dumps(data, allow_nan=False))


@settings(max_examples=60, deadline=None)
@given(snapshots)
def test_a_snapshot_survives_the_wire(snap: Snapshot) -> None:
    assert wire.decode_snapshot(_through_json(wire.encode_snapshot(snap))) == snap


@settings(max_examples=30, deadline=None)
@given(st.lists(snapshots, min_size=1, max_size=4))
def test_a_sequence_of_snapshots_survives_one_encoder_and_decoder(snaps: list[Snapshot]) -> None:
    encoder, decoder = wire.SnapshotEncoder(), wire.SnapshotDecoder()
    for snap in snaps:
        assert decoder.decode(_through_json(encoder.encode(snap))) == snap


def test_unchanged_nodes_and_jobs_are_not_sent_again(small: Trace) -> None:
    encoder = wire.SnapshotEncoder()
    snap = Simulator(small, Fifo()).snapshot(0.0)
    job = JobView("j1", Resources())
    snap = Snapshot(1.0, snap.nodes, (job,))
    encoder.encode(snap)
    again = encoder.encode(Snapshot(2.0, snap.nodes, (job,)))
    assert again["nodes"] == [None] * len(snap.nodes)
    assert again["pending"] == ["j1"] and again["profiles"] == []


@settings(max_examples=60, deadline=None)
@given(st.lists(decisions, max_size=5))
def test_decisions_survive_the_wire(sent: list[Place | Preempt]) -> None:
    line = wire.dumps("decisions", decisions=[wire.encode_decision(d) for d in sent])
    assert wire.decode_decisions(line) == sent


def _decisions_line(**changes: object) -> bytes:
    place = wire.encode_decision(Place("j1", "n0", (0,), 1000, GIB))
    place.update(changes)
    return wire.dumps("decisions", decisions=[place])


@pytest.mark.parametrize(("changes", "field"), [
    ({"gpus": ["0"]}, "decisions[0].gpus[0]"),
    ({"milli": True}, "decisions[0].milli"),
    ({"milli": 1.5}, "decisions[0].milli"),
    ({"job_id": 7}, "decisions[0].job_id"),
    ({"steal": 1}, "decisions[0].steal"),
    ({"kind": "grant"}, "decisions[0].kind"),
])
def test_a_decision_of_the_wrong_shape_is_refused_by_name(changes: dict[str, object], field: str) -> None:
    with pytest.raises(wire.WireError, match=field.replace("[", r"\[").replace("]", r"\]")):
        wire.decode_decisions(_decisions_line(**changes))


def test_a_missing_field_is_refused_by_name() -> None:
    place = wire.encode_decision(Place("j1", "n0", (0,), 1000, GIB))
    del place["memory"]
    with pytest.raises(wire.WireError, match=r"decisions\[0\]\.memory: missing"):
        wire.decode_decisions(wire.dumps("decisions", decisions=[place]))


def test_another_schema_version_is_refused() -> None:
    with pytest.raises(wire.WireError, match="^v:"):
        wire.decode_quantum(b'{"v": %d, "type": "quantum", "value": 1.0}' % (wire.SCHEMA_VERSION + 1))
    with pytest.raises(wire.WireError, match="^v:"):
        wire.decode_quantum(b'{"v": %d, "type": "quantum", "value": 1.0}' % (wire.SCHEMA_VERSION - 1))


def test_a_non_finite_number_is_refused() -> None:
    with pytest.raises(wire.WireError, match="NaN"):
        wire.decode_quantum(b'{"v": %d, "type": "quantum", "value": NaN}' % wire.SCHEMA_VERSION)
    with pytest.raises(wire.WireError, match="quantum.value"):
        wire.decode_quantum(b'{"v": %d, "type": "quantum", "value": 1e999}' % wire.SCHEMA_VERSION)


def test_an_answer_of_another_type_is_refused() -> None:
    with pytest.raises(wire.WireError, match="type: expected quantum"):
        wire.decode_quantum(b'{"v": %d, "type": "requeue", "value": true}' % wire.SCHEMA_VERSION)


def test_a_reported_failure_raises_with_its_kind() -> None:
    with pytest.raises(wire.ChildError) as caught:
        wire.decode_decisions(wire.dumps("error", kind="memory", error="too big"))
    assert caught.value.kind == "memory"


# -- the parent's model checks what the child decides ---------------------------------------------


def _one_gpu_trace(*requests: Resources) -> Trace:
    node = NodeSpec("n0", (GPU_TYPES["A100-80GB"],))
    return Trace("tiny", (node,), tuple(TraceJob(f"j{i}", 0.0, 100.0, r) for i, r in enumerate(requests)))


def _forged(trace: Trace, forge: object) -> None:
    """Run ``trace`` with the first round's honest first placement replaced by what ``forge`` makes of it."""

    def decide(snap: Snapshot) -> list[Place | Preempt]:
        honest = schedule(snap, Fifo())
        return forge(honest[0], snap) if honest else []  # type: ignore[operator]

    Simulator(trace, Fifo(), decide=decide).run()


def _as(place: Place, job_id: str) -> Place:
    return Place(job_id, place.node, place.gpus, place.milli, place.memory, place.mig_profile, place.mig_slot,
                 place.sharing)


@pytest.mark.parametrize(("forge", "error"), [
    (lambda p, s: [p, _as(p, "j1")], "over-commits a GPU"),
    (lambda p, s: [p, p], "not pending"),
    (lambda p, s: [_as(p, "nobody")], "not pending"),
    (lambda p, s: [Place(p.job_id, p.node, (-1,), p.milli, p.memory)], "names a GPU the node lacks"),
    (lambda p, s: [Place(p.job_id, p.node, (1,), p.milli, p.memory)], "names a GPU the node lacks"),
    (lambda p, s: [Place(p.job_id, "n9", p.gpus, p.milli, p.memory)], "unknown node"),
    (lambda p, s: [Preempt("j1")], "not running"),
])
def test_a_forged_whole_gpu_decision_stops_the_run(forge: object, error: str) -> None:
    with pytest.raises(SimulationError, match=error):
        _forged(_one_gpu_trace(Resources(gpus=1), Resources(gpus=1)), forge)


def test_a_mig_slot_clash_stops_the_run() -> None:
    trace = _one_gpu_trace(Resources(mig_profile="3g.40gb"), Resources(mig_profile="3g.40gb"))
    with pytest.raises(SimulationError, match="no room for 3g.40gb at slot 0"):
        _forged(trace, lambda p, s: [p, _as(p, "j1")])


def test_a_cpu_only_job_given_a_gpu_stops_the_run() -> None:
    trace = _one_gpu_trace(Resources(gpus=0), Resources(gpus=1))
    with pytest.raises(SimulationError, match="gives 1 GPUs to a job asking 0"):
        _forged(trace, lambda p, s: [Place("j0", "n0", (0,), 1000, 80 * GIB)])


# -- through the boundary -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fifo", "fgd"])
def test_a_policy_through_the_boundary_scores_as_it_does_in_process(small: Trace, name: str) -> None:
    module, cls = {"fifo": ("fifo", "Fifo"), "fgd": ("fgd", "Fgd")}[name]
    outcome = _boundary(f"from gpuos.scheduler.policies.{module} import {cls}\nPOLICY = {cls}\n", small, screen=True)
    assert outcome.ok, outcome.error
    assert _comparable(outcome.runs[small.name]) == _comparable(simulate(small, name).to_json())


def test_a_candidate_that_crashes_is_reported_as_a_crash(small: Trace) -> None:
    source = FIFO + "class Boom(Fifo):\n    def order(self, pending, snap):\n        raise ValueError('boom')\nPOLICY = Boom\n"
    outcome = _boundary(source, small)
    assert (outcome.ok, outcome.kind) == (False, "crash") and "boom" in outcome.error


def test_a_candidate_that_hangs_is_killed_at_the_deadline(small: Trace) -> None:
    source = FIFO + "class Hang(Fifo):\n    def order(self, pending, snap):\n        while True:\n            pass\nPOLICY = Hang\n"
    outcome = run_candidate(source, [small], timeout=3)
    assert (outcome.ok, outcome.kind) == (False, "timeout")


CHEAT_IDLE_ALIAS = '''
from gpuos.scheduler import GpuView as cls
from gpuos.scheduler.policies.fifo import Fifo

cls.idle = property(lambda self: True)
POLICY = Fifo
'''

CHEAT_CAPACITY = ESCAPE + '''
from gpuos.scheduler import schedule
from gpuos.scheduler.policies.fifo import Fifo

operator.attrgetter("__glo" + "bals__")(schedule)["gpu_fits"] = lambda request, gpu: True
POLICY = Fifo
'''


@pytest.mark.parametrize("source", [CHEAT_IDLE_ALIAS, CHEAT_CAPACITY], ids=["cls-alias-idle", "framework-capacity"])
def test_a_candidate_that_patches_capacity_checks_is_invalid(source: str) -> None:
    # Whole GPUs that name their memory: a GPU that looks idle takes them all.
    trace = _one_gpu_trace(*[Resources(gpus=1, memory_bytes=GIB)] * 4)
    outcome = _boundary(source, trace)
    assert (outcome.ok, outcome.kind) == (False, "invalid"), outcome.error
    assert "over-commits a GPU" in outcome.error


CHEAT_FRAGMENTATION = '''
from gpuos.scheduler.fragmentation import Fragmentation as cls
from gpuos.scheduler.policies.fifo import Fifo

cls.of = lambda self, model, frees, cpu_free: 0.0
POLICY = Fifo
'''


def test_a_candidate_that_rewrites_the_fragmentation_measure_is_measured_by_the_parents(
    small: Trace, fifo_run: dict[str, object]
) -> None:
    outcome = _boundary(CHEAT_FRAGMENTATION, small)
    assert outcome.ok, outcome.error
    honest = fifo_run["metrics"]["fragmentation"]  # type: ignore[index]
    assert honest > 2 * FRAGMENTATION_FLOOR  # there is fragmentation to hide
    assert outcome.runs[small.name]["metrics"]["fragmentation"] == honest


CHEAT_METRICS = ESCAPE + '''
from gpuos.scheduler.policies.fifo import Fifo

try:
    objectives = _import("gpuos.agents.objectives", fromlist=["OBJECTIVES"])
    for key, o in list(objectives.OBJECTIVES.items()):
        objectives.OBJECTIVES[key] = objectives.Objective(o.name, o.description, lambda r, m=o.measure: m(r) * 0.01)
except BaseException:
    pass  # a failed import must not give the cheat away as a crash
sys = _import("sys")
for module in list(sys.modules.values()):
    scores = operator.attrgetter("__dict__")(module).get("OBJECTIVES")
    if isinstance(scores, dict):
        scores.clear()
POLICY = Fifo
'''


def test_a_candidate_that_wraps_the_metric_functions_scores_as_its_honest_equivalent(
    small: Trace, fifo_run: dict[str, object]
) -> None:
    outcome = _boundary(CHEAT_METRICS, small)
    assert outcome.ok, outcome.error
    assert _comparable(outcome.runs[small.name]) == fifo_run


CHEAT_FRAMES = ESCAPE + '''
from gpuos.scheduler.policies.fifo import Fifo

sys = _import("sys")
records = operator.attrgetter("records")
job = operator.attrgetter("job")


def durations():
    """Every true duration any caller's frame holds (a simulator's records)."""
    found = {}
    frame = operator.attrgetter("_get" + "frame")(sys)()
    while frame is not None:
        for value in list(operator.attrgetter("f_loc" + "als")(frame).values()):
            try:
                held = records(value)
            except AttributeError:
                continue
            if isinstance(held, dict):
                for rec in held.values():
                    found[job(rec).id] = job(rec).duration
        frame = operator.attrgetter("f_ba" + "ck")(frame)
    return found


class Clairvoyant(Fifo):
    name = "clairvoyant"

    def order(self, pending, snap):
        known = durations()
        return sorted(pending, key=lambda j: (known.get(j.id, 0.0), j.submitted_at, j.id))


POLICY = Clairvoyant
'''


def test_frames_read_in_process_give_the_cheat_true_durations(small: Trace, fifo_run: dict[str, object]) -> None:
    # The control for the next test: where the simulator shares the process, the cheat works.
    cheat = load_policy_class(CHEAT_FRAMES, screen=False)()
    assert simulate(small, cheat).metrics["mean_jct"] < fifo_run["metrics"]["mean_jct"]  # type: ignore[index]


def test_frames_read_through_the_boundary_find_no_duration(small: Trace, fifo_run: dict[str, object]) -> None:
    outcome = _boundary(CHEAT_FRAMES, small)
    assert outcome.ok, outcome.error
    assert _comparable(outcome.runs[small.name]) == fifo_run


def _probe(path: Path) -> str:
    return ESCAPE + f'''
from gpuos.scheduler.policies.fifo import Fifo

os = _import("os")


def attempt(action):
    try:
        action()
    except OSError as exc:
        return f"errno {{exc.errno}}"
    return "allowed"


class Probe(Fifo):
    def order(self, pending, snap):
        opened = attempt(lambda: _real["open"]({str(path)!r}).read(64))
        killed = attempt(lambda: os.kill(os.getppid(), 0))
        ran = attempt(lambda: os.execv("/bin/true", ["true"]))
        raise RuntimeError(f"open={{opened}} kill={{killed}} exec={{ran}}")


POLICY = Probe
'''


def test_an_escaped_candidate_cannot_open_files_signal_or_run_programs(small: Trace) -> None:
    pytest.importorskip("pyseccomp")
    trace_file = Path(__file__).resolve().parents[1] / "data" / "alibaba-gpu-2023" / "openb_pod_list_default.csv"
    assert trace_file.is_file()
    outcome = _boundary(_probe(trace_file), small)
    assert outcome.kind == "crash"
    for what in ("open", "kill", "exec"):
        assert f"{what}=errno 1" in outcome.error, outcome.error  # EPERM from the seccomp filter


def test_the_honest_probe_control_runs_every_action_in_process(small: Trace, tmp_path: Path) -> None:
    # Without the child's filter the same actions succeed (exec excepted: it is never reached here).
    target = tmp_path / "t.csv"
    target.write_text("id\n")
    probe = load_policy_class(_probe(target).replace('os.execv("/bin/true", ["true"])', "None"), screen=False)()
    with pytest.raises(RuntimeError, match="open=allowed kill=allowed"):
        probe.order([], Snapshot(0.0, (), ()))
