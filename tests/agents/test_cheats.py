"""Candidates that read true durations out of what they are shown: job ids and estimate noise.

Both families worked from outside against the old evaluator: a public trace's pod names and its
seeded estimate noise are, in effect, a code for each job's duration. Each cheat below is a
table built from the public trace and embedded in the candidate's source; through the evaluator
(salted ids, noise from a secret seed; agents/masking.py) it must score no better than the
honest policy it falls back to, while on the public trace (the control) it wins.
"""

from __future__ import annotations

import pytest

from gpuos.agents.evaluator import evaluate_source
from gpuos.agents.masking import Secret
from gpuos.agents.objectives import simulate
from gpuos.agents.sandbox import load_policy_class
from gpuos.agents.workloads import STAGE1, load_workload

SPEC = STAGE1[0]
# The honest equivalent of both cheats: SRTF on the users' estimates. Each cheat is SRTF whose
# estimate comes from its table when the table knows the job (the truth, on the public trace).
HONEST = "from gpuos.scheduler.policies.srtf import ShortestRemainingTimeFirst\nPOLICY = ShortestRemainingTimeFirst\n"
CHEAT = '''
from gpuos.scheduler.policies.srtf import ShortestRemainingTimeFirst
from gpuos.scheduler.preemption import victims_to_fit

TABLE = {table!r}


def left(j, now):
    gpus = j.request.compute_milli / 1000 or 1.0
    return max(0.0, TABLE.get({key}, j.estimated_seconds) - j.attained(now) / gpus)


class Cheat(ShortestRemainingTimeFirst):
    name = "cheat"

    def order(self, pending, snap):
        return sorted(pending, key=lambda j: (left(j, snap.now), j.submitted_at, j.id))

    def victims(self, job, snap):
        mine = left(job, snap.now)
        return victims_to_fit(job, snap, eligible=lambda r: left(r, snap.now) > 2 * mine,
                              preference=lambda r: -left(r, snap.now))


POLICY = Cheat
'''


def _public_table(key: str) -> dict[object, float]:
    trace = load_workload(SPEC)
    if key == "id":
        return {j.id: j.duration for j in trace.jobs}
    return {round(j.estimate, 6): j.duration for j in trace.jobs}


@pytest.mark.parametrize(("key", "lookup"), [("id", "j.id"), ("estimate", "round(j.estimated_seconds, 6)")])
def test_a_duration_table_keyed_by_what_the_public_trace_shows_wins_only_there(key: str, lookup: str) -> None:
    source = CHEAT.format(table=_public_table(key), key=lookup)
    public = load_workload(SPEC)
    control = simulate(public, load_policy_class(source)()).metrics["mean_jct"]
    honest_public = simulate(public, load_policy_class(HONEST)()).metrics["mean_jct"]
    assert control < 0.95 * honest_public, "the control: on the public trace the table is the truth"

    # One evaluation's secret for both, as a search judges all its candidates under one.
    secret = Secret.fresh()
    cheat = evaluate_source(source, traces=[SPEC], secret=secret)
    honest = evaluate_source(HONEST, traces=[SPEC], secret=secret)
    assert cheat["valid"] == 1.0 and honest["valid"] == 1.0
    assert cheat["combined_score"] <= honest["combined_score"] + 1e-9


def test_each_evaluation_masks_with_its_own_secret() -> None:
    first = evaluate_source(HONEST, traces=[SPEC])
    second = evaluate_source(HONEST, traces=[SPEC])
    # Different secrets draw different estimates, so the figures differ; both are honest runs.
    assert first[f"{SPEC}/mean_jct"] != second[f"{SPEC}/mean_jct"]
