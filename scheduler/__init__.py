"""Scheduling: the policy interface, the framework loop that applies it, the policies, and the simulator.

The daemon and the simulator both build a :class:`Snapshot` and call :func:`schedule`; a policy
cannot tell which one it runs in.
"""

from gpuos.scheduler.framework import schedule
from gpuos.scheduler.policy import Policy
from gpuos.scheduler.registry import available, get_policy, register
from gpuos.scheduler.snapshot import Decision, GpuView, JobView, NodeView, Place, Preempt, Share, Snapshot

__all__ = [
    "Decision",
    "GpuView",
    "JobView",
    "NodeView",
    "Place",
    "Policy",
    "Preempt",
    "Share",
    "Snapshot",
    "available",
    "get_policy",
    "register",
    "schedule",
]
