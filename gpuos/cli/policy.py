"""``gpuosctl policy``: list, set (with a guard), shadow and inspect the scheduling policy.

``gpuosctl policy`` (or ``policy status``) shows the active policy, the guard watching it with its
latest reading, the recent switches and rollbacks, and the shadow. A policy is named by its
registered name or by a policy file (an argument ending in ``.py``): the file is read here and
its text sent, so gpuosd never opens a path a caller names. Bad flags exit 2 naming the flag
(``--guard``, ``--window``, ``--min-samples``); gpuosd checks them again.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from google.protobuf.json_format import MessageToDict

from gpuos.cli import output
from gpuos.cli.args import fail, non_negative_int
from gpuos.client import Client
from gpuos.errors import InvalidArgument
from gpuos.guard import parse_guard
from gpuos.text import escape
from gpuos.v1 import policy_pb2

_FLAGS = {"guard": "--guard", "window": "--window", "min_samples": "--min-samples"}


def add_policy_parser(sub: Any) -> None:
    p = sub.add_parser("policy", help="list, set, shadow or inspect the scheduling policy")
    psub = p.add_subparsers(dest="policy_cmd", metavar="ACTION")
    psub.add_parser("status", help="the active policy, its guard, the recent switches and the shadow (the default)")
    psub.add_parser("list", help="available policies")
    ps = psub.add_parser("set", help="make NAME (a registered policy, or a policy file ending in .py) the active policy")
    ps.add_argument("name")
    ps.add_argument("--guard", default="", metavar="METRIC<=BOUND",
                    help="switch back by itself if breached: p99_queue_delay_ls<=DURATION or slo_attainment>=FRACTION")
    ps.add_argument("--window", default="", metavar="DURATION", help="the guard's sliding window (e.g. 90s, 5m)")
    ps.add_argument("--min-samples", type=non_negative_int, default=0, metavar="K",
                    help="samples a window must hold before the guard is judged (default 5)")
    sh = psub.add_parser("shadow", help="compute NAME's decisions each round beside the active policy's, "
                                        "applying none; --report shows where they differ")
    sh.add_argument("name", nargs="?", default="", help="a registered policy, or a policy file ending in .py")
    sh.add_argument("--off", action="store_true", help="stop shadowing")
    sh.add_argument("--report", action="store_true",
                    help="the differences so far and the simulated effect of both policies on the window's jobs")
    sh.add_argument("--examples", type=non_negative_int, default=10, help="with --report: differing rounds to show")
    sh.add_argument("--no-simulation", action="store_true", help="with --report: skip the simulated effect")


def _named(name: str) -> tuple[str, str, str] | int:
    """(name, source, filename) for a registered name or a policy file; an exit code if unreadable."""
    if not name.endswith(".py"):
        return name, "", ""
    try:
        with open(name, encoding="utf-8") as f:
            return "", f.read(), name
    except (OSError, UnicodeDecodeError) as exc:
        return fail(f"{name}: cannot read the policy file: {exc}")


def run_policy(args: argparse.Namespace, client: Client, as_json: bool) -> int:
    action = args.policy_cmd or "status"
    if action == "list":
        policies = client.policies()
        if as_json:
            print(output.dumps([{"name": p.name, "description": p.description, "active": p.active,
                                 "provenance": p.provenance, "verified_gain": p.verified_gain,
                                 "filename": p.filename} for p in policies]))
        else:
            print(output.table(["", "POLICY", "DESCRIPTION", "PROVENANCE", "VERIFIED GAIN"],
                               [["*" if p.active else "", p.name, p.description or p.filename, p.provenance,
                                 p.verified_gain or "-"] for p in policies]))
        return 0
    if action == "set":
        return _set(args, client, as_json)
    if action == "shadow":
        return _shadow(args, client, as_json)
    status = client.policy_status()
    print(output.dumps(_dict(status)) if as_json else status_text(status))
    return 0


def _set(args: argparse.Namespace, client: Client, as_json: bool) -> int:
    if args.guard:
        try:
            parse_guard(args.guard, args.window, args.min_samples)
        except InvalidArgument as exc:
            return fail(f"{_FLAGS.get(exc.field, exc.field)}: {exc.problem}")
    elif args.window or args.min_samples:
        return fail("--window: --window and --min-samples go with --guard")
    named = _named(args.name)
    if isinstance(named, int):
        return named
    name, source, filename = named
    info = client.set_policy(name, source=source, filename=filename, guard=args.guard, window=args.window,
                             min_samples=args.min_samples)
    if as_json:
        print(output.dumps(_dict(client.policy_status())))
    elif args.guard:
        print(f"policy is now {info.name}, guarded by {args.guard} over {args.window} windows")
    else:
        print(f"policy is now {info.name}")
    return 0


def _shadow(args: argparse.Namespace, client: Client, as_json: bool) -> int:
    chosen = [flag for flag, on in (("NAME", bool(args.name)), ("--off", args.off), ("--report", args.report)) if on]
    if len(chosen) != 1:
        return fail("shadow: give one of NAME, --off or --report")
    if args.report:
        report = client.shadow_report(args.examples, simulate=not args.no_simulation)
        print(output.dumps(_dict(report)) if as_json else report_text(report))
        return 0
    if args.off:
        state = client.stop_shadow()
    else:
        named = _named(args.name)
        if isinstance(named, int):
            return named
        name, source, filename = named
        state = client.shadow(name, source=source, filename=filename)
    print(output.dumps(_dict(state)) if as_json else shadow_line(state))
    return 0


def _dict(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else "-"


def _value(metric: str, value: float) -> str:
    if value != value:  # NaN: no sample yet
        return "-"
    return f"{value:.3g}s" if metric == "p99_queue_delay_ls" else f"{value:.1%}"


def shadow_line(state: policy_pb2.ShadowStatus) -> str:
    if state.on:
        return (f"shadow: {state.candidate} since {_clock(state.since)}, {state.rounds} rounds, "
                f"{state.differing_rounds} differing")
    if state.disabled_reason:
        return escape(f"shadow: off ({state.candidate} was switched off: {state.disabled_reason})")
    return "shadow: off"


def status_text(status: policy_pb2.PolicyStatus) -> str:
    active = status.active
    lines = [f"policy: {active.name}" + (f" (file {active.filename})" if active.filename else "")]
    if status.HasField("guard"):
        g = status.guard
        lines.append(f"guard: {g.text} over {g.window_seconds:g}s windows (judged from {g.min_samples} samples); "
                     f"a breach switches back to {g.previous}")
        if g.read_at:
            judged = "judged" if g.judged else "too few samples to judge"
            lines.append(f"  latest reading {_clock(g.read_at)}: {_value(g.metric, g.value)} from {g.samples} "
                         f"samples ({judged})")
        else:
            lines.append("  no reading yet")
    else:
        lines.append("guard: none")
    lines.append(f"rollbacks: {status.rollbacks}")
    lines.append(shadow_line(status.shadow))
    if status.switches:
        lines.append("switches:")
        lines += [escape(f"  {_clock(s.time)}  {s.kind:<11} {s.from_policy} -> {s.to_policy}: {s.reason}")
                  for s in status.switches]
    return "\n".join(lines)


def report_text(report: policy_pb2.ShadowReportResponse) -> str:
    lines = [shadow_line(report.status)]
    c = report.counts
    lines.append(f"jobs placed only by the active policy {c.placed_only_by_active}, only by the candidate "
                 f"{c.placed_only_by_candidate}; on other GPUs {c.other_gpus}; rounds in another order "
                 f"{c.order_differs}; preempted only by the active {c.preempted_only_by_active}, only by the "
                 f"candidate {c.preempted_only_by_candidate}")
    for d in report.examples:
        parts = [f"{label} {','.join(ids)}" for label, ids in (
            ("active-only", d.placed_only_by_active), ("candidate-only", d.placed_only_by_candidate),
            ("other-gpus", d.other_gpus), ("preempted-by-active", d.preempted_only_by_active),
            ("preempted-by-candidate", d.preempted_only_by_candidate)) if ids]
        if d.order_differs:
            parts.append("another order")
        lines.append(escape(f"  {_clock(d.time)}  " + "; ".join(parts)))
    if report.HasField("active") and report.HasField("candidate"):
        a, b = report.active, report.candidate
        lines.append(f"simulated over the window's {report.simulated_jobs} jobs ({report.left_out_jobs} left out):")
        rows = [[a.policy, f"{a.mean_jct:.3g}s", f"{a.p99_queue_delay_ls:.3g}s", f"{a.slo_attainment:.1%}"],
                [b.policy, f"{b.mean_jct:.3g}s", f"{b.p99_queue_delay_ls:.3g}s", f"{b.slo_attainment:.1%}"],
                ["delta", f"{b.mean_jct - a.mean_jct:+.3g}s", f"{b.p99_queue_delay_ls - a.p99_queue_delay_ls:+.3g}s",
                 f"{(b.slo_attainment - a.slo_attainment) * 100:+.1f} pt"]]
        lines.append(output.table(["POLICY", "MEAN JCT", "P99 QUEUE DELAY (LS)", "SLO ATTAINMENT"], rows))
    else:
        lines.append(f"simulated effect: {report.simulation_note or 'none'}")
    return "\n".join(lines)
