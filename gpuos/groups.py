"""Job groups: an agent's speculative variants of one piece of work, and the rules that end them.

A group is named per tenant. Its members are ordinary jobs that carry the group's name. The
group's mode says when it has what it wanted:

- ``all``: every member runs (the group only bounds their GPU-seconds);
- ``first-success``: the first member to succeed ends the group, and the others stop with reason
  ``sibling-succeeded``;
- ``best-of:K``: the K-th member to succeed ends the group the same way.

A group with a budget ends when its members' GPU-seconds (finished members' attained service
plus running members' service so far) reach the budget; the members still pending or running
stop with reason ``group-budget``. An ended group takes no new members.

A duplicate (a submit whose dedupe key matches a job of the tenant; gpuos/dedupe.py) submitted
into a group gets the job it duplicated, which then counts for that group as a member that
spends nothing: its success, now or when it comes, counts toward the group's goal. Ending the
group does not stop that job: it belongs to its own group, or to none.

These rules are pure functions of a :class:`Group`, so the daemon's store (which applies them
in the same transaction as the success that triggers them, so a sibling cancellation is never
lost in a crash) and the simulator apply one definition.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass

from gpuos.errors import InvalidArgument

# Reasons a member stops because of its group (also the reason an ended group records).
SIBLING_SUCCEEDED = "sibling-succeeded"
GROUP_BUDGET = "group-budget"
GROUP_CANCELLED = "cancelled-by-user"

MAX_BEST_OF = 10_000
# A budget beyond this many GPU-seconds (about 32 GPU-years) is a typo, not a bound.
MAX_BUDGET = 1e9
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$")


class GroupMode(str, enum.Enum):
    ALL = "all"
    FIRST_SUCCESS = "first-success"
    BEST_OF = "best-of"


@dataclass(frozen=True)
class GroupSpec:
    """How a group behaves, fixed by the submit that creates it."""

    name: str
    mode: GroupMode = GroupMode.ALL
    # K of best-of:K (1 for first-success, 0 for all).
    best_of: int = 0
    # GPU-seconds the members may spend in all; 0: no bound.
    budget: float = 0.0

    @property
    def goal(self) -> int:
        """Successes that end the group (0: none do)."""
        return self.best_of if self.mode is not GroupMode.ALL else 0

    @property
    def mode_text(self) -> str:
        """The mode as users spell it: ``all``, ``first-success`` or ``best-of:K``."""
        return f"best-of:{self.best_of}" if self.mode is GroupMode.BEST_OF else self.mode.value


@dataclass(frozen=True)
class Group:
    """A group as recorded: its spec, who owns it, and how far it got."""

    tenant: str
    spec: GroupSpec
    created_at: float
    succeeded: int = 0
    # GPU-seconds of the members that have ended (running members' service is added live).
    spent: float = 0.0
    # Why the group ended ("" while it is open): sibling-succeeded (its goal was reached),
    # group-budget, or cancelled-by-user.
    ended_reason: str = ""
    ended_at: float | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def open(self) -> bool:
        return not self.ended_reason


def check_name(name: str) -> str:
    """``name`` if it may name a group; InvalidArgument("group") otherwise."""
    if not _NAME.match(name):
        raise InvalidArgument("group", f"{name[:40]!r} is not a group name: 1 to 128 letters, digits or ._:/@+- "
                                       "starting with a letter or digit")
    return name


def parse_mode(text: str) -> tuple[GroupMode, int]:
    """(mode, K) from ``all``, ``first-success`` or ``best-of:K``; InvalidArgument("group_mode") otherwise."""
    spelled = text.strip().lower()
    if spelled in ("", GroupMode.ALL.value):
        return GroupMode.ALL, 0
    if spelled == GroupMode.FIRST_SUCCESS.value:
        return GroupMode.FIRST_SUCCESS, 1
    kind, sep, count = spelled.partition(":")
    if kind == GroupMode.BEST_OF.value and sep:
        if count.isdigit() and 1 <= int(count) <= MAX_BEST_OF:
            return GroupMode.BEST_OF, int(count)
        raise InvalidArgument("group_mode", f"best-of:K needs a whole K from 1 to {MAX_BEST_OF}, not {count[:20]!r}")
    raise InvalidArgument("group_mode", f"{text[:40]!r} is not one of first-success, all, best-of:K")


def check_budget(budget: float) -> float:
    """``budget`` GPU-seconds if it is a bound (0: none); InvalidArgument("group_budget") otherwise."""
    if not math.isfinite(budget) or budget < 0 or budget > MAX_BUDGET:
        raise InvalidArgument("group_budget", f"{budget} is not a number of GPU-seconds from 0 (no bound) to "
                                              f"{MAX_BUDGET:g}")
    return budget


def make_spec(name: str, mode: str = "", budget: float = 0.0) -> GroupSpec:
    """A checked GroupSpec from what a user typed."""
    kind, k = parse_mode(mode)
    return GroupSpec(check_name(name), kind, k, check_budget(budget))


def after_success(group: Group) -> str:
    """Why ``group`` ends once one more member succeeded ("" when it stays open)."""
    goal = group.spec.goal
    return SIBLING_SUCCEEDED if group.open and goal and group.succeeded + 1 >= goal else ""


def over_budget(group: Group, running_service: float) -> bool:
    """Whether ``group``'s members, with ``running_service`` GPU-seconds of those still running,
    have spent its budget."""
    return group.open and group.spec.budget > 0 and group.spent + running_service >= group.spec.budget


def budget_left(group: Group, running_service: float) -> float:
    """GPU-seconds the group may still spend (infinite without a budget)."""
    if group.spec.budget <= 0:
        return math.inf
    return max(0.0, group.spec.budget - group.spent - running_service)
