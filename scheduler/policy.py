"""The policy interface: a few pure methods at named extension points.

The framework (:mod:`gpuos.scheduler.framework`) owns the loop, checks capacity and applies
decisions; a policy only orders, filters, scores, picks victims, chooses how a fraction shares
its GPU, sets quanta and says whether a victim is suspended or restarted. Every method is a pure function of its arguments, so the same object
runs in the daemon and the simulator.
"""

from __future__ import annotations

from collections.abc import Sequence

from gpuos.scheduler.snapshot import GpuView, JobView, NodeView, Share, Snapshot


class Policy:
    """Base policy: FIFO order, first fit, no preemption, fractions as MPS clients, 1 s quanta,
    suspend (where the GPU can) rather than restart a preempted job, requeue after faults.

    Subclasses override only what makes them different. ``first_fit`` tells the framework to
    take the first feasible option instead of scoring them all (the common fast case).
    ``strict_order`` makes the queue head block everything behind it instead of letting smaller
    jobs backfill past it.

    Read a job's service with ``job.attained(snap.now)``, not ``job.attained_service``: the
    latter is the service up to ``job.service_since``, when the model last folded it.
    """

    name: str = "base"
    description: str = ""
    # Where the policy came from: a paper (and the implementation it follows), "hand-written",
    # or the search run that evolved it. ``verified_gain`` is an evolved policy's held-out gain as
    # the verifier measured it, in words ("" for a policy no search produced).
    provenance: str = "hand-written"
    verified_gain: str = ""
    first_fit: bool = True
    strict_order: bool = False
    # The framework may score one node per distinct node state (see index.node_state) and let
    # it stand for the others: set it only when fits() and score() read a node's state, never
    # its name or which jobs it runs (a subclass that reads more must set it back to False).
    # Off by default, so untrusted or evolved code gets every node scored.
    scores_node_state_only: bool = False
    # Take the option pick() names among all feasible ones instead of scoring them; with
    # scores_node_state_only, the nodes of one state are counted without visiting each.
    picks: bool = False
    # Seconds between rounds that time alone should trigger (demotion, aging, time slices);
    # 0 means rounds on arrivals and completions suffice. The daemon and the simulator both
    # honour it, and nothing else (scheduler/state.py, Cadence).
    period: float = 0.0

    def order(self, pending: Sequence[JobView], snap: Snapshot) -> Sequence[JobView]:
        """Queue order: the job to try first comes first."""
        if pending is snap.pending and snap.pending_by_age is not None:
            # The model keeps the queue in this order (scheduler/state.py QueueOrder): the same
            # list as the sort below, without sorting 10,000 jobs every round.
            return list(snap.pending_by_age)
        return sorted(pending, key=lambda j: (j.submitted_at, j.id))

    def fits(self, job: JobView, node: NodeView, gpus: tuple[GpuView, ...], snap: Snapshot) -> bool:
        """Extra filter on an option that already has the capacity (e.g. anti-affinity)."""
        return True

    def score(self, job: JobView, node: NodeView, gpus: tuple[GpuView, ...], snap: Snapshot) -> float:
        """How good an option is; the framework takes the highest (ties: first seen)."""
        return 0.0

    def pick(self, job: JobView, count: int, snap: Snapshot) -> int:
        """With ``picks``: which of the ``count`` feasible options to take (0 <= answer < count).
        The options' order is fixed by the snapshot but otherwise unspecified."""
        return 0

    def victims(self, job: JobView, snap: Snapshot) -> Sequence[str]:
        """Running jobs to preempt so that ``job`` can run; empty means wait."""
        return ()

    def share(self, job: JobView, gpu: GpuView, snap: Snapshot) -> Share:
        """How ``job``, a fraction whose user pinned no sharing mode, would share ``gpu`` (asked
        once per GPU the framework considers; a user's explicit mode is never asked about).
        With ``scores_node_state_only`` it must read only ``gpu``'s state, as ``score`` does."""
        return Share.MPS

    def quantum(self, job: JobView, snap: Snapshot) -> float:
        """Seconds ``job`` may run before a job sharing its GPU gets a turn."""
        return 1.0

    def suspend(self, job: JobView, snap: Snapshot) -> bool:
        """When the framework's driver preempts ``job`` (a victim this policy named) on a GPU that
        can suspend to host memory (``GpuView.suspend``, a single-GPU job): suspend it, keeping
        its process and progress, to resume by restore on a GPU it may use (True, the default),
        or stop it to restart later (False). A suspension costs its memory's bytes over the host
        link twice (out now, back at resume) where a restart costs the checkpoint and restart
        (Costs.preemption_cost); a suspended job waits only for a GPU of its model on its node
        (its own GPU unless the node restores across GPUs). Never asked where no GPU can suspend."""
        return True

    def requeue_after_fault(self, job: JobView) -> bool:
        """When a fault (failed GPU, dead MPS daemon) kills ``job``: requeue it (True) or fail it."""
        return True
