"""``gpuosctl group get|list|cancel|watch``: job groups, an agent's speculative variants of one
piece of work (members join with ``gpuosctl submit --group NAME``).

``group watch NAME`` prints the members' events until every member has ended, then exits 0 if
the group reached its goal (first-success: a member succeeded; best-of:K: K did; all: every
member did) and 1 if not (its budget ran out, it was cancelled, members failed).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from gpuos.cli import output
from gpuos.cli.args import group_name
from gpuos.groups import GroupMode, parse_mode
from gpuos.v1 import jobs_pb2

if TYPE_CHECKING:
    from gpuos.client import Client


def add_group_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("group", help="job groups: show, follow or cancel a group and its members")
    gsub = p.add_subparsers(dest="group_cmd", required=True, metavar="ACTION")
    g = gsub.add_parser("get", help="a group: its mode, budget, what it spent, and each member")
    g.add_argument("name", type=group_name, metavar="NAME")
    g.add_argument("--tenant", default="", help="admins: another tenant's group")
    g = gsub.add_parser("list", help="your groups, oldest first")
    g.add_argument("--tenant", default="", help="admins: another tenant's groups")
    g = gsub.add_parser("cancel", help="end a group: its pending members are cancelled, running ones stopped")
    g.add_argument("name", type=group_name, metavar="NAME")
    g.add_argument("--tenant", default="", help="admins: another tenant's group")
    g = gsub.add_parser("watch", help="print the members' events until all have ended; exit 0 if the group "
                                      "reached its goal, else 1")
    g.add_argument("name", type=group_name, metavar="NAME")


def run_group(args: argparse.Namespace, client: Client) -> int:
    as_json = args.output == "json"
    if args.group_cmd == "list":
        groups = client.groups(args.tenant)
        print(output.dumps([output.group_dict(g) for g in groups]) if as_json else output.groups_table(groups))
        return 0
    if args.group_cmd == "watch":
        return _watch(client, args.name, as_json)
    group = client.group(args.name, args.tenant) if args.group_cmd == "get" else client.cancel_group(args.name,
                                                                                                      args.tenant)
    print(output.dumps(output.group_dict(group)) if as_json else output.group_text(group))
    return 0


def goal_reached(group: jobs_pb2.Group) -> bool:
    """Whether ``group`` got what its mode asks for: K successes (first-success: 1), or, in mode
    all, a success from every member."""
    mode, k = parse_mode(group.mode)
    succeeded = sum(1 for m in group.members if m.state == jobs_pb2.SUCCEEDED)
    if mode is GroupMode.ALL:
        return bool(group.members) and succeeded == len(group.members)
    return succeeded >= k


def _watch(client: Client, name: str, as_json: bool) -> int:
    """Follow the group's member events until every member has ended; 0 if its goal was reached."""
    from gpuos.client import TERMINAL

    group = client.group(name)
    live = {m.id for m in group.members if m.state not in TERMINAL}
    # Replayed from the first event, so a member that ends between the GetGroup above and the
    # stream's start is still seen ending; members that join later are seen being submitted.
    following = bool(live)
    for event in client.group_events(name, follow=following):
        print(output.dumps_line(output.event_dict(event)) if as_json else output.event_line(event), flush=True)
        if not event.job_id:
            continue
        if event.state in TERMINAL:
            live.discard(event.job_id)
        else:
            live.add(event.job_id)
        if following and not live:
            group = client.group(name)
            live = {m.id for m in group.members if m.state not in TERMINAL}
            if not live:
                break
    return 0 if goal_reached(group) else 1
