"""An agentic workload: agents speculating on GPUs in job groups, with duplicated work.

An agent explores: for one piece of work it launches a group of variants (candidate programs,
sweep points, evaluations), keeps the first or best that succeeds, and often resubmits work it
or another branch already ran. :func:`generate` builds such a trace for the simulator.

Where the defaults come from. The seed paper, Parameswaran et al., "Supporting Our AI Overlords:
Redesigning Data Systems to be Agent-First" (arXiv 2509.00997), names agentic speculation's
traits (scale, heterogeneity, redundancy, steerability) and measures them on the BIRD
text-to-SQL benchmark with GPT-4o-mini and Qwen2.5-Coder-7B agents. The figures below are as
its summaries report them (the abstract gives none; read through the ``search`` tool: the
tomkennes.com and emergentmind.com digests of the paper):

- ``success = 0.14`` and ``group_size = 8``: the agents' task success grows with the number of
  attempts from 14% to 70%. Taking 14% as one attempt's chance and attempts as independent
  (our assumption, not the paper's), 1 - 0.86^n = 0.70 gives n = 8 attempts. The digests'
  "rise 14-70%" can also be read as a relative gain in success; we take the reading above, and
  both are parameters.
- ``duplicate_rate = 0.2``: across an agent's queries the distinct sub-plans are often under
  10-20% of the total, so most of the work repeats at sub-plan grain. A whole GPU job repeats
  far less often than a sub-plan; 0.2 of jobs repeating an earlier one of the same tenant is
  our choice, well under the paper's sub-plan figure.

Choices, not measurements: the mode mix (``modes``), budgets at ``budget`` x the members'
estimated GPU-seconds, member run times log-normal around ``member_seconds`` (sigma
``member_sigma``), one GPU per member, group sizes uniform in [size/2, 3 size/2], a duplicate
copying one of its tenant's last ``repeat_window`` jobs, and the offered ``load``.

Arrivals come from the Azure LLM inference trace 2023 (Patel et al., "Splitwise", ISCA 2024;
CC BY 4.0; ``../shared/traces/azure-llm-2023/``): the members of a group arrive at consecutive
request times of the trace, the next group at the ones after (an agent's fan-out is a burst of
calls); times are stretched by one factor so the offered load, every member run to its end,
is ``load`` of the cluster. Seeded and deterministic.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path

from gpuos.errors import InvalidArgument, NotFound
from gpuos.groups import make_spec
from gpuos.jobs import Resources
from gpuos.scheduler.sim.cluster import parse_gpus
from gpuos.scheduler.sim.traces import Trace, TraceGroup, TraceJob, noisy_estimate, trace_dir
from gpuos.scheduler.snapshot import GroupKey

AZURE = "AzureLLMInferenceTrace_code.csv"


@dataclass(frozen=True)
class AgenticParams:
    """What :func:`generate` builds; the module docstring says where each default comes from."""

    groups: int = 100
    group_size: int = 8
    success: float = 0.14
    duplicate_rate: float = 0.2
    # Group modes and their weights (spelled as gpuosctl takes them).
    modes: tuple[tuple[str, float], ...] = (("first-success", 0.6), ("best-of:2", 0.2), ("all", 0.2))
    # A group's budget as a share of its members' estimated GPU-seconds (0: no budgets).
    budget: float = 0.75
    member_seconds: float = 120.0
    member_sigma: float = 1.0
    repeat_window: int = 32
    tenants: int = 4
    load: float = 0.9
    gpus: str = "2x8xH100-80GB"

    def check(self) -> AgenticParams:
        if self.groups < 1 or self.group_size < 1:
            raise InvalidArgument("groups", "an agentic workload needs at least one group of one member")
        if not (0.0 <= self.success <= 1.0 and 0.0 <= self.duplicate_rate < 1.0):
            raise InvalidArgument("success", "success must be in [0, 1] and duplicate_rate in [0, 1)")
        if not (self.load > 0 and self.member_seconds > 0 and self.budget >= 0):
            raise InvalidArgument("load", "load and member_seconds must be positive, budget at least 0")
        return self


def azure_arrivals(path: Path | None = None) -> list[float]:
    """Request times of an Azure LLM inference trace CSV, in seconds from its first request."""
    path = path or trace_dir() / "azure-llm-2023" / AZURE
    if not path.exists():
        raise NotFound(f"Azure LLM trace {path} not found; set GPUOS_TRACES or pass a path")
    with path.open() as f:
        stamps = [row["TIMESTAMP"] for row in csv.DictReader(f)]
    # "2023-11-16 18:17:03.9799600": seven fractional digits, more than datetime parses.
    seconds = []
    for stamp in stamps:
        clock = stamp.split(" ")[1]
        hours, minutes, secs = clock.split(":")
        seconds.append(int(hours) * 3600 + int(minutes) * 60 + float(secs))
    first = seconds[0] if seconds else 0.0
    return sorted(s - first for s in seconds)


def generate(params: AgenticParams | None = None, seed: int = 0, arrivals: Path | None = None) -> Trace:
    """An agentic trace of ``params.groups`` groups, arriving as the Azure trace's requests do."""
    p = (params or AgenticParams()).check()
    rng = random.Random(f"agentic/{seed}")
    times = azure_arrivals(arrivals)
    if len(times) < 2:
        raise InvalidArgument("arrivals", "the arrival trace needs at least two requests")
    span = times[-1] + (times[-1] - times[0]) / (len(times) - 1)  # one wrap of the trace
    names, weights = zip(*p.modes, strict=True)
    jobs: list[TraceJob] = []
    groups: list[TraceGroup] = []
    history: dict[str, list[TraceJob]] = {}
    cursor = 0
    for g in range(p.groups):
        tenant = f"agent-{g % p.tenants}"
        size = rng.randint(max(1, math.ceil(p.group_size / 2)), max(1, p.group_size + p.group_size // 2))
        mode = rng.choices(names, weights)[0]
        members: list[TraceJob] = []
        for k in range(size):
            wrap, row = divmod(cursor, len(times))
            arrival = wrap * span + times[row]
            cursor += 1
            earlier = history.get(tenant, [])[-p.repeat_window:]
            if earlier and rng.random() < p.duplicate_rate:
                copied = rng.choice(earlier)
                job = replace(copied, id=f"g{g:04d}-m{k:02d}", arrival=arrival, group=f"agent{g:04d}")
            else:
                duration = p.member_seconds * math.exp(rng.gauss(0.0, p.member_sigma))
                job = TraceJob(
                    id=f"g{g:04d}-m{k:02d}", arrival=arrival, duration=duration, request=Resources(gpus=1),
                    tenant=tenant, estimate=noisy_estimate(rng, duration), group=f"agent{g:04d}",
                    dedupe_key=f"work-{g:04d}-{k:02d}", succeeds=rng.random() < p.success,
                )
            members.append(job)
            history.setdefault(tenant, []).append(job)
        budget = p.budget * sum(j.estimate * j.request.compute_milli / 1000 for j in members)
        groups.append(TraceGroup(tenant, make_spec(f"agent{g:04d}", mode, budget)))
        jobs.extend(members)
    nodes = parse_gpus(p.gpus)
    capacity = sum(len(n.gpus) for n in nodes)
    work = sum(j.duration * j.request.compute_milli / 1000 for j in jobs)
    last = max(j.arrival for j in jobs) or 1.0
    stretch = work / (p.load * capacity * last)
    jobs = [replace(j, arrival=j.arrival * stretch) for j in jobs]
    jobs.sort(key=lambda j: (j.arrival, j.id))
    name = (f"agentic:groups={p.groups}&size={p.group_size}&success={p.success}&dup={p.duplicate_rate}"
            f"&seed={seed}")
    source = ("agentic generator (scheduler/sim/agentic.py) on Azure LLM inference trace 2023 arrivals "
              "(Patel et al., ISCA 2024)")
    return Trace(name, nodes, tuple(jobs), source, tuple(groups))


def plainly(trace: Trace) -> Trace:
    """The same jobs submitted plainly: no groups, no deduplication, every member runs to its end."""
    jobs = tuple(replace(j, group="", dedupe_key="") for j in trace.jobs)
    return Trace(f"{trace.name} (plain)", trace.nodes, jobs, trace.source)


def labels(trace: Trace) -> dict[str, GroupKey]:
    """Each grouped job's group, by job id: what the group figures of a plain run are counted by."""
    return {j.id: (j.tenant, j.group) for j in trace.jobs if j.group}
