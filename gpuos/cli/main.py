"""``gpuosctl``: submit and follow GPU jobs, inspect devices, choose the scheduling policy.

Exit codes: 0 success; 1 the daemon refused or failed the request, or a feature's optional
dependencies are missing (a one-line reason is printed); 2 the command line was wrong (one line:
``gpuosctl: --flag: problem``); ``wait`` exits with the job's own exit code, ``group watch`` with 0
when the group reached its goal and 1 when not (gpuos/cli/group.py); 141 the output was
cut short by a closed pipe (``gpuosctl list | head -1``), quietly, as for a process that SIGPIPE
ended, so ``set -o pipefail`` still sees it.
"""

from __future__ import annotations

import argparse
import os
import sys

from gpuos.cli import output
from gpuos.cli.args import (
    Parser,
    byte_size,
    dedupe_key,
    fail,
    fraction,
    group_budget,
    group_mode,
    group_name,
    key_value,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    sequence_number,
    slo_duration,
)
from gpuos.cli.evolve import add_evolve_parser, run_evolve
from gpuos.cli.group import add_group_parser, run_group
from gpuos.cli.policy import add_policy_parser, run_policy
from gpuos.cli.replay import add_replay_parser, run_replay
from gpuos.cli.sim import add_sim_parser, run_sim
from gpuos.cli.trace import add_trace_parser, run_trace
from gpuos.errors import GpuosError, InvalidArgument
from gpuos.text import escape

STATES = ("pending", "running", "paused", "succeeded", "failed", "cancelled")


def _split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """Everything after the first ``--`` is the job's command, never gpuosctl's options."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="gpuosctl", description="Talk to gpuosd, the gpuos daemon.")
    parser.add_argument("--socket", help="gpuosd's Unix socket (default $GPUOS_SOCKET, $XDG_RUNTIME_DIR/gpuos.sock, "
                                         "/run/gpuos/gpuos.sock)")
    parser.add_argument("--addr", help="gpuosd's TCP address HOST:PORT instead of the socket")
    parser.add_argument("--tls-ca", help="TCP: the CA that signs gpuosd's certificate (makes the connection TLS)")
    parser.add_argument("--tls-cert", help="TCP: your client certificate (PEM), for mutual TLS")
    parser.add_argument("--tls-key", help="TCP: your client certificate's private key (PEM)")
    parser.add_argument("--token-file", default=os.environ.get("GPUOS_TOKEN_FILE") or None,
                        help="TCP: a file holding your bearer token (default $GPUOS_TOKEN_FILE)")
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("submit", help="submit a job: gpuosctl submit [options] -- CMD ARGS...")
    p.add_argument("--name", default="")
    share = p.add_mutually_exclusive_group()
    share.add_argument("--gpus", type=positive_int, help="whole GPUs (default 1)")
    share.add_argument("--gpu-fraction", type=fraction, help="a share of one GPU in (0, 1]")
    p.add_argument("--memory", type=byte_size, help="GPU memory per GPU, e.g. 8GiB")
    p.add_argument("--mig-profile", default="", help="a MIG slice, e.g. 1g.10gb")
    p.add_argument("--gpu-type", action="append", default=[], help="allowed GPU model (repeatable)")
    p.add_argument("--share", default="", choices=["", "mps", "timeslice", "executor"],
                   help="how to share a GPU: mps, timeslice (take turns) or executor (a --kernel job in the "
                        "GPU's shared kernel executor, by priority); unset, the policy chooses "
                        "for a --gpu-fraction (MPS unless it says otherwise)")
    p.add_argument("--priority", default="normal", choices=["high", "normal", "low"])
    p.add_argument("--tenant", default="", help="submit for this tenant (admins only; default: you)")
    p.add_argument("--qos", default="", choices=["", "LS", "BE", "ls", "be"], help="LS latency-sensitive, BE best-effort")
    p.add_argument("--estimate", type=non_negative_float, default=0.0, help="your estimate of the run time, in seconds")
    p.add_argument("--slo-p99", type=slo_duration, metavar="DURATION",
                   help="with --qos LS: a target for the p99 of the job's request latency, e.g. 20ms (the job "
                        "reports each request with gpuos.report_latency; kernel jobs report each step); gpuosd "
                        "throttles the best-effort jobs sharing its GPU to hold it")
    p.add_argument("--env", action="append", type=key_value, default=[], help="KEY=VALUE for the job (repeatable)")
    p.add_argument("--no-env", action="store_true", help="do not pass your environment on to the job")
    p.add_argument("--kernel", default="", help="a built-in kernel instead of a command (see `gpuosctl kernels`)")
    p.add_argument("--param", action="append", type=key_value, default=[],
                   help="kernel parameter KEY=VALUE (repeatable)")
    p.add_argument("--wait", action="store_true", help="wait for the job and exit with its exit code")
    # No string defaults here: argparse would pass them through the type, which refuses "".
    p.add_argument("--group", type=group_name, metavar="NAME",
                   help="make the job a member of this job group (created by its first submit)")
    p.add_argument("--group-mode", type=group_mode, metavar="MODE",
                   help="a new group's goal: first-success (the first member to succeed stops the others), "
                        "best-of:K (K successes do), all (default)")
    p.add_argument("--group-budget", type=group_budget, default=0.0, metavar="GPU-SECONDS",
                   help="a new group's GPU-seconds in all; reaching it stops its members (default 0: no bound)")
    dedupe = p.add_mutually_exclusive_group()
    dedupe.add_argument("--dedupe", action="store_true",
                        help="reuse a pending, running or recently succeeded job of yours that is the same work: "
                             "same command and arguments (or kernel and params), cwd, --dedupe-env values and "
                             "--dedupe-input contents")
    dedupe.add_argument("--dedupe-key", type=dedupe_key, metavar="KEY",
                        help="reuse a job of yours submitted with the same KEY (as --dedupe does)")
    p.add_argument("--dedupe-env", action="append", default=[], metavar="NAME",
                   help="with --dedupe: this environment variable's value is part of the work (repeatable)")
    p.add_argument("--dedupe-input", action="append", default=[], metavar="FILE",
                   help="with --dedupe: this file's contents are part of the work (repeatable)")
    p.add_argument("--from-file", metavar="JOBS.jsonl",
                   help="submit every line of this JSON Lines file (- for stdin) as a job; keys as "
                        "gpuos.Client.submit names them (command, name, gpus, group, dedupe_key...). A malformed "
                        "line sends nothing; the daemon takes up to 10,000 jobs at a time, all or none, so a "
                        "longer file is committed chunk by chunk. --tenant and the --group flags fill in lines "
                        "that do not say; --dedupe keys each line. Prints one id per line (-o json: an object a "
                        "line)")

    p = sub.add_parser("set-priority", help="steer: give a pending or running job a new priority")
    p.add_argument("job")
    p.add_argument("priority", choices=["high", "normal", "low"])
    p = sub.add_parser("stop", help="steer: a running kernel job stops at its next step boundary")
    p.add_argument("job")
    add_group_parser(sub)

    p = sub.add_parser("get", help="show one job")
    p.add_argument("job")
    p = sub.add_parser("list", help="list jobs")
    p.add_argument("--state", action="append", default=[], choices=STATES + tuple(s.upper() for s in STATES))
    p.add_argument("--tenant", default="")
    p.add_argument("--limit", type=non_negative_int, default=0, help="only the newest N")
    p = sub.add_parser("cancel", help="cancel jobs")
    p.add_argument("jobs", nargs="+")
    p = sub.add_parser("logs", help="print a job's output")
    p.add_argument("job")
    p.add_argument("-f", "--follow", action="store_true")
    p = sub.add_parser("wait", help="wait for a job; exit with its exit code")
    p.add_argument("job")
    p.add_argument("--timeout", type=non_negative_float, default=None, help="give up after this many seconds")
    p = sub.add_parser("events", help="print job events")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--job", default="")
    p.add_argument("--since", type=sequence_number, default=0, help="only events after this sequence number")
    sub.add_parser("devices", help="show GPUs and who holds what")
    p = sub.add_parser("top", help="a live view of GPUs, partitions and jobs, refreshed in place")
    p.add_argument("--interval", type=positive_float, default=1.0, help="seconds between refreshes")
    p.add_argument("--iterations", type=non_negative_int, default=0, help="stop after N refreshes (0: until Ctrl-C)")
    add_policy_parser(sub)
    sub.add_parser("kernels", help="built-in kernels and their parameters")
    add_sim_parser(sub)
    add_replay_parser(sub)
    add_evolve_parser(sub)
    add_trace_parser(sub)
    p = sub.add_parser("fault", help="admins: inject a fault to see gpuos contain it")
    p.add_argument("kind", choices=["gpu-fail", "gpu-restore", "mps-crash"])
    p.add_argument("gpu", type=non_negative_int)
    p = sub.add_parser("drain", help="admins: take a GPU out of service, moving its jobs to another GPU where "
                                     "the driver can")
    p.add_argument("gpu", type=non_negative_int)
    p.add_argument("--requeue", action="store_true",
                   help="stop and requeue for a restart the jobs that cannot move (default: they finish there)")
    p = sub.add_parser("undrain", help="admins: put a drained GPU back into service")
    p.add_argument("gpu", type=non_negative_int)
    return parser


def run(args: argparse.Namespace, command: list[str]) -> int:
    from gpuos.client import TERMINAL, ApiError, Client, read_token

    as_json = args.output == "json"
    if args.cmd == "sim":
        return run_sim(args)
    if args.cmd == "evolve":
        return run_evolve(args)
    if args.cmd == "kernels":
        from gpuos.extras import install_hint
        from gpuos.kernels.registry import RUNTIME_EXTRA, available, missing_runtime

        kernels = available()
        # What this Python lacks to run them; gpuosd checks the same on its own Python at submit.
        missing = list(missing_runtime())
        if as_json:
            print(output.dumps({n: {"description": k.description, "params": [p.name for p in k.params],
                                    "runnable": not missing, "missing": missing}
                                for n, k in kernels.items()}))
        else:
            for name, spec in kernels.items():
                print(f"{name}: {spec.description}")
                for prm in spec.params:
                    bounds = f" [{prm.minimum:g}..{prm.maximum:g}]" if prm.minimum is not None and prm.maximum is not None else ""
                    choices = f" {{{','.join(prm.choices)}}}" if prm.choices else ""
                    print(f"  --param {prm.name}=<{prm.kind}> default {prm.default}{bounds}{choices}  {prm.help}")
            if missing:
                print(f"kernels cannot run here: {' and '.join(missing)} not installed "
                      f"({install_hint(RUNTIME_EXTRA)})")
            else:
                print("kernels can run here (torch and triton are installed)")
        return 0

    try:
        token = read_token(args.token_file) if args.token_file else None
        client = Client(socket=args.socket, addr=args.addr, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                        tls_key=args.tls_key, token=token)
    except ValueError as exc:
        return fail(str(exc))
    try:
        if args.cmd == "replay":
            return run_replay(args, client)
        if args.cmd == "trace":
            return run_trace(args, client)
        if args.cmd == "submit":
            return _submit(client, args, command, as_json)
        if args.cmd == "group":
            return run_group(args, client)
        if args.cmd == "set-priority":
            job = client.set_priority(args.job, args.priority)
            shown = output.job_dict(job)
            print(output.dumps(shown) if as_json else f"{job.id} {shown['state']} priority {shown['priority']}")
        elif args.cmd == "stop":
            job = client.stop(args.job)
            shown = output.job_dict(job)
            after = "" if job.state in TERMINAL else " (stops at its next step boundary)"
            print(output.dumps(shown) if as_json else f"{job.id} {shown['state']}{after}")
        elif args.cmd == "get":
            job = client.get(args.job)
            if as_json:
                print(output.dumps(output.job_dict(job)))
            else:
                print(output.jobs_table([job]))
                if job.message:
                    print(f"message: {escape(job.message)}")
                if job.HasField("waiting"):
                    print(f"waiting: {escape(job.waiting.message)}")
                if job.HasField("colocation"):
                    for line in output.colocation_lines(job.colocation):
                        print(escape(line))
                elif job.spec.slo_p99_seconds:
                    print(f"slo: p99 target {job.spec.slo_p99_seconds * 1e3:.3g} ms (measured while it runs)")
                if job.HasField("progress"):
                    p = job.progress
                    print(f"progress: {p.steps_done}/{p.steps_total} steps, last {p.last_latency_ms:.3f} ms, "
                          f"mean {p.mean_latency_ms:.3f} ms, p99 {p.p99_latency_ms:.3f} ms")
        elif args.cmd == "list":
            jobs = client.list(args.state, args.tenant, args.limit)
            print(output.dumps([output.job_dict(j) for j in jobs]) if as_json else output.jobs_table(jobs))
        elif args.cmd == "cancel":
            for job_id in args.jobs:
                job = client.cancel(job_id)
                print(output.dumps(output.job_dict(job)) if as_json else f"{job.id} {output.job_dict(job)['state']}")
        elif args.cmd == "logs":
            for stream, data in client.logs(args.job, follow=args.follow):
                target = sys.stdout if stream == "stdout" else sys.stderr
                target.buffer.write(data)
                target.flush()
        elif args.cmd == "wait":
            job = client.wait(args.job, timeout=args.timeout)
            if as_json:
                print(output.dumps(output.job_dict(job)))
            return _exit_code(job)
        elif args.cmd == "events":
            for event in client.events(follow=args.follow, job_id=args.job, since=args.since):
                print(output.dumps(output.event_dict(event)) if as_json else output.event_line(event), flush=True)
        elif args.cmd == "devices":
            reply = client.devices()
            if as_json:
                print(output.dumps({"backend": reply.backend, "devices": [output.device_dict(d) for d in reply.devices]}))
            else:
                print(output.devices_table(reply.devices))
                print(f"backend: {reply.backend}")
        elif args.cmd == "fault":
            device = client.inject_fault(args.gpu, args.kind)
            print(output.dumps(output.device_dict(device)) if as_json else output.devices_table([device]))
        elif args.cmd in ("drain", "undrain"):
            drained = client.drain(args.gpu, undrain=args.cmd == "undrain", requeue=getattr(args, "requeue", False))
            if as_json:
                print(output.dumps({"message": drained.message, "migrating": list(drained.migrating),
                                    "requeued": list(drained.requeued), "staying": list(drained.staying),
                                    "device": output.device_dict(drained.device)}))
            else:
                print(output.devices_table([drained.device]))
                print(drained.message)
        elif args.cmd == "top":
            _top(client, args.interval, args.iterations)
        elif args.cmd == "policy":
            return run_policy(args, client, as_json)
    except ApiError as exc:
        hint = ""
        if exc.code.name == "UNAVAILABLE":
            hint = f" (is gpuosd running at {client.target}? --socket or GPUOS_SOCKET names another)"
        print(f"gpuosctl: {exc.code.name}: {escape(exc.details)}{hint}", file=sys.stderr)
        return 1
    except TimeoutError as exc:
        print(f"gpuosctl: timed out: {exc}", file=sys.stderr)
        return 1
    except (GpuosError, ValueError) as exc:
        # The client checks values before it sends them (a priority, a size, a field's range).
        return fail(str(exc))
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()
    return 0


# Job flags a job file sets per line; with --from-file, one on the command line is refused
# rather than silently applied to some jobs and not others.
_PER_LINE = {"name": "--name", "gpus": "--gpus", "gpu_fraction": "--gpu-fraction", "memory": "--memory",
             "mig_profile": "--mig-profile", "gpu_type": "--gpu-type", "share": "--share", "qos": "--qos",
             "estimate": "--estimate", "env": "--env", "no_env": "--no-env", "kernel": "--kernel",
             "param": "--param", "wait": "--wait", "dedupe_key": "--dedupe-key", "slo_p99": "--slo-p99"}


def _submit(client, args: argparse.Namespace, command: list[str], as_json: bool) -> int:  # type: ignore[no-untyped-def]
    """``gpuosctl submit``: one job from the command line, or every job of ``--from-file``."""
    from gpuos.client import current_env

    if not args.group:
        for flag, given in (("--group-mode", args.group_mode), ("--group-budget", args.group_budget)):
            if given:
                return fail(f"{flag}: needs --group NAME (a group's mode and budget are set by its first submit)")
    for flag, given in (("--dedupe-env", args.dedupe_env), ("--dedupe-input", args.dedupe_input)):
        if given and not args.dedupe:
            return fail(f"{flag}: needs --dedupe")
    if args.from_file is not None:
        return _submit_file(client, args, command, as_json)
    if bool(command) == bool(args.kernel):
        return fail("submit: give either a command after -- or --kernel NAME")
    if args.share == "executor" and not args.kernel:
        return fail("--share: executor runs --kernel jobs only; a command shares a GPU by mps or timeslice")
    if args.share == "executor" and args.gpus not in (None, 1):
        return fail("--gpus: an executor job runs in one GPU's kernel executor; ask for 1")
    env = {} if args.no_env or args.kernel else current_env()
    env.update(dict(args.env))
    kwargs = dict(
        command=command, kernel=args.kernel, params=dict(args.param), name=args.name,
        gpus=args.gpus, gpu_fraction=args.gpu_fraction, memory=args.memory, mig_profile=args.mig_profile,
        gpu_types=args.gpu_type, sharing=args.share, priority=args.priority, tenant=args.tenant, qos=args.qos.upper(),
        env=env, cwd=os.getcwd() if not args.kernel else "", estimated_seconds=args.estimate,
        group=args.group or "", group_mode=args.group_mode or "", group_budget=args.group_budget,
        dedupe_key=args.dedupe_key or "",
        slo_p99=args.slo_p99 or 0.0,
    )
    if args.slo_p99 and args.qos.upper() != "LS":
        return fail("--slo-p99: only a latency-sensitive job may declare an SLO; add --qos LS")
    if args.dedupe:
        try:
            kwargs["dedupe_key"] = _dedupe_key(kwargs, args)
        except InvalidArgument as exc:
            return fail(f"--dedupe-input: {exc.problem}")
    reply = client.submit_reply(**kwargs)
    job, duplicate = reply.job, reply.duplicate
    print(output.dumps({**output.job_dict(job), "duplicate": duplicate}) if as_json
          else output.submitted_line(job.id, duplicate))
    if args.wait:
        return _exit_code(client.wait(job.id))
    return 0


def _dedupe_key(kwargs: dict, args: argparse.Namespace) -> str:  # type: ignore[type-arg]
    """--dedupe's key for the job ``kwargs`` describe: over its command (or kernel and params),
    its cwd, the values in its environment of the --dedupe-env names, the --dedupe-input contents."""
    from gpuos.dedupe import key_for

    return key_for(kwargs.get("command", ()), kernel=kwargs.get("kernel", ""), params=kwargs.get("params"),
                   env=kwargs.get("env"), env_names=args.dedupe_env, cwd=kwargs.get("cwd", ""),
                   inputs=args.dedupe_input)


def _submit_file(client, args: argparse.Namespace, command: list[str], as_json: bool) -> int:  # type: ignore[no-untyped-def]
    """``submit --from-file``: check every line, then send them with SubmitBatch, a chunk at a time."""
    from gpuos.cli import jobfile
    from gpuos.client import ApiError

    if command:
        return fail("--from-file: the jobs come from the file; give no command after --")
    given = [flag for dest, flag in _PER_LINE.items() if getattr(args, dest)]
    if args.priority != "normal":
        given.insert(0, "--priority")
    if given:
        return fail(f"{given[0]}: with --from-file, set it per job in the file")
    defaults = {key: value for key, value in (("tenant", args.tenant), ("group", args.group),
                                              ("group_mode", args.group_mode), ("group_budget", args.group_budget))
                if value}
    name = "stdin" if args.from_file == "-" else args.from_file
    try:
        if args.from_file == "-":
            jobs = jobfile.read(sys.stdin, defaults, os.getcwd())
        else:
            with open(args.from_file, encoding="utf-8") as source:
                jobs = jobfile.read(source, defaults, os.getcwd())
    except OSError as exc:
        return fail(f"--from-file: cannot read {name}: {exc.strerror or exc}")
    except UnicodeDecodeError:
        return fail(f"--from-file: {name} is not UTF-8 text")
    except jobfile.JobFileError as exc:
        return fail(f"--from-file: {name} {exc}")
    if not jobs:
        return fail(f"--from-file: {name} has no jobs")
    requests = []
    for job in jobs:
        kwargs = dict(job.kwargs)
        if args.dedupe and not kwargs.get("dedupe_key"):
            try:
                kwargs["dedupe_key"] = _dedupe_key(kwargs, args)
            except InvalidArgument as exc:
                return fail(f"--dedupe-input: {exc.problem}")
        requests.append(client.submit_request(**kwargs))
    for start, end in jobfile.chunks(requests):
        try:
            replies = client.submit_batch(requests[start:end])
        except ApiError as exc:
            details = jobfile.locate(exc.details, jobs[start:end], name)
            if start:
                details += f"; the jobs before line {jobs[start].line} were submitted (their ids are above)"
            raise ApiError(exc.code, details) from None
        for job, reply in zip(jobs[start:end], replies, strict=True):
            print(output.dumps_line({"line": job.line, "id": reply.job.id, "duplicate": reply.duplicate}) if as_json
                  else output.submitted_line(reply.job.id, reply.duplicate))
        sys.stdout.flush()
    return 0


# Jobs per state group that `top` asks for (one page each: it never lists the whole queue).
TOP_PAGE = 1000


def _top(client, interval: float, iterations: int) -> None:  # type: ignore[no-untyped-def]
    """Redraw devices and the active jobs every ``interval`` seconds, like top(1)."""
    import time

    tty = sys.stdout.isatty()
    shown = 0
    while iterations == 0 or shown < iterations:
        devices = client.devices()
        # One page of each, however long the queue: placed jobs first, so a long queue never
        # pushes the running ones off the screen. A full page shows its count as "N+".
        placed = client.list_page(["running", "paused"], page_size=TOP_PAGE)
        pending = client.list_page(["pending"], page_size=TOP_PAGE)
        jobs = [*placed.jobs, *pending.jobs]
        policy = next((p.name for p in client.policies() if p.active), "?")
        counts = {s: f"{sum(1 for j in page.jobs if output.job_dict(j)['state'] == s)}"
                     f"{'+' if page.next_page_token else ''}"
                  for s, page in (("RUNNING", placed), ("PAUSED", placed), ("PENDING", pending))}
        screen = [
            f"gpuos  {time.strftime('%H:%M:%S')}  backend {devices.backend}  policy {policy}  "
            f"running {counts['RUNNING']}  paused {counts['PAUSED']}  pending {counts['PENDING']}",
            "",
            output.devices_table(devices.devices),
            "",
            output.jobs_table(jobs[:40]),
        ]
        if len(jobs) > 40:
            more = "+" if placed.next_page_token or pending.next_page_token else ""
            screen.append(f"... and {len(jobs) - 40}{more} more")
        # Home the cursor and clear below it, so the view refreshes in place without flicker.
        sys.stdout.write(("\x1b[H\x1b[J" if tty else "") + "\n".join(screen) + "\n")
        sys.stdout.flush()
        shown += 1
        if iterations == 0 or shown < iterations:
            time.sleep(interval)


def _exit_code(job) -> int:  # type: ignore[no-untyped-def]
    if job.HasField("exit_code"):
        return job.exit_code
    from gpuos.client import jobs_pb2

    return 0 if job.state == jobs_pb2.SUCCEEDED else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options, command = _split_command(argv)
    parser = build_parser()
    args = parser.parse_args(options)
    if command and args.cmd != "submit":
        parser.error("a command after -- is only for submit")
    try:
        code = run(args, command)
        # Flush here, not at exit, so a closed pipe is caught below and not reported by Python.
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader went away (`gpuosctl list | head -1`): stop quietly. Later writes, including
        # the interpreter's own flush at exit, go to /dev/null instead of raising again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141


if __name__ == "__main__":
    sys.exit(main())
