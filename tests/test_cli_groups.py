"""gpuosctl for agents (issue 13): job groups, deduplication, --from-file and steering.

Bad values are refused before anything is sent (no daemon: the socket is one where none
listens), as one line naming the flag, and exit 2. The rest runs gpuosctl against a daemon.
The daemon's group semantics themselves are tests/test_groups.py's.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from gpuos.cli import jobfile
from gpuos.cli.main import main
from gpuos.client import Client
from gpuos.daemon.daemon import Daemon
from gpuos.v1 import jobs_pb2

PY = sys.executable
NO_DAEMON = "/nonexistent/gpuos.sock"


@dataclass
class Result:
    code: int
    out: str
    err: str


def ctl(capsys: pytest.CaptureFixture[str], *argv: str, socket: str = NO_DAEMON) -> Result:
    """gpuosctl ``argv``, run in this process (argparse's exit 2 included)."""
    try:
        code = main(["--socket", socket, *argv])
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpuosctl: ") and "Traceback" not in err, err
    return lines[0]


# -- bad input, no daemon ---------------------------------------------------------------------

BAD_VALUES = [
    ("--group-mode", ["submit", "--group", "g", "--group-mode", "fastest", "--", "true"]),
    ("--group-mode", ["submit", "--group", "g", "--group-mode", "best-of:0", "--", "true"]),
    ("--group-mode", ["submit", "--group", "g", "--group-mode", "best-of:many", "--", "true"]),
    ("--group-budget", ["submit", "--group", "g", "--group-budget", "-1", "--", "true"]),
    ("--group-budget", ["submit", "--group", "g", "--group-budget", "nan", "--", "true"]),
    ("--group-budget", ["submit", "--group", "g", "--group-budget", "1e12", "--", "true"]),
    ("--group", ["submit", "--group", "no spaces", "--", "true"]),
    ("--group", ["submit", "--group", "", "--", "true"]),
    ("--group-mode", ["submit", "--group-mode", "first-success", "--", "true"]),
    ("--group-budget", ["submit", "--group-budget", "10", "--", "true"]),
    ("--dedupe-key", ["submit", "--dedupe-key", "k" * 200, "--", "true"]),
    ("--dedupe-key", ["submit", "--dedupe", "--dedupe-key", "k", "--", "true"]),
    ("--dedupe-env", ["submit", "--dedupe-env", "HOME", "--", "true"]),
    ("--dedupe-input", ["submit", "--dedupe-input", "/etc/hostname", "--", "true"]),
    ("--dedupe-input", ["submit", "--dedupe", "--dedupe-input", "/nonexistent/data.bin", "--", "true"]),
    ("--from-file", ["submit", "--from-file", "/nonexistent/jobs.jsonl"]),
    ("--from-file", ["submit", "--from-file", "/nonexistent/jobs.jsonl", "--", "true"]),
    ("--gpus", ["submit", "--from-file", "/nonexistent/jobs.jsonl", "--gpus", "1"]),
    ("--priority", ["submit", "--from-file", "/nonexistent/jobs.jsonl", "--priority", "high"]),
    ("--dedupe-key", ["submit", "--from-file", "/nonexistent/jobs.jsonl", "--dedupe-key", "k"]),
    ("priority", ["set-priority", "abc123", "urgent"]),
    ("NAME", ["group", "get", "bad name"]),
    ("NAME", ["group", "watch", "a b"]),
]


@pytest.mark.parametrize("flag, argv", BAD_VALUES, ids=[" ".join(a)[:60] for _, a in BAD_VALUES])
def test_a_bad_value_exits_2_with_one_line_naming_the_flag(capsys: pytest.CaptureFixture[str], flag: str,
                                                           argv: list[str]) -> None:
    result = ctl(capsys, *argv)
    assert result.code == 2, result.err
    assert one_line(result.err).startswith(f"gpuosctl: {flag}: ")
    assert result.out == ""


BAD_LINES = [
    ('{"command": ["true"]}\n{"command": ["true"], "gpus": 0}\n', "line 2: gpus: "),
    ('{"command": ["true"]}\n\nnot json\n', "line 3: is not JSON"),
    ('[1, 2]\n', "line 1: is a list, not a JSON object"),
    ('{"comand": ["true"]}\n', "line 1: 'comand': is not a job field"),
    ('{"command": "python train.py"}\n', "line 1: command: is not a list of strings"),
    ('{"command": []}\n', "line 1: command: is empty"),
    ('{"name": "no command"}\n', "line 1: command: give either command"),
    ('{"command": ["true"], "gpus": 1, "gpu_fraction": 0.5}\n', "line 1: gpu_fraction: "),
    ('{"command": ["true"], "gpu_fraction": 1.5}\n', "line 1: gpu_fraction: "),
    ('{"command": ["true"], "memory": "12QB"}\n', "line 1: memory: "),
    ('{"command": ["true"], "priority": "urgent"}\n', "line 1: priority: "),
    ('{"command": ["true"], "env": {"A": 1}}\n', "line 1: env: "),
    ('{"command": ["true"], "estimated_seconds": "soon"}\n', "line 1: estimated_seconds: "),
    ('{"command": ["true"], "group": "g", "group_mode": "best-of:0"}\n', "line 1: group_mode: "),
    ('{"command": ["true"], "group": "g", "group_budget": -5}\n', "line 1: group_budget: "),
    ('{"command": ["true"], "group_budget": 5}\n', "line 1: group_budget: needs a group"),
    ('{"command": ["true"], "group": "a b"}\n', "line 1: group: "),
    ('{"command": ["true"], "dedupe_key": " padded "}\n', "line 1: dedupe_key: "),
]


@pytest.mark.parametrize("text, named", BAD_LINES, ids=[n for _, n in BAD_LINES])
def test_a_malformed_job_file_line_exits_2_naming_the_line_and_the_key(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text(text)
    result = ctl(capsys, "submit", "--from-file", str(path))
    assert result.code == 2, result.err
    assert one_line(result.err).startswith(f"gpuosctl: --from-file: {path} {named}")


def test_an_empty_job_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "jobs.jsonl").write_text("\n\n")
    result = ctl(capsys, "submit", "--from-file", str(tmp_path / "jobs.jsonl"))
    assert result.code == 2 and "has no jobs" in one_line(result.err)


def test_a_long_job_file_is_sent_in_batches_of_at_most_10000_jobs() -> None:
    requests = [Client.submit_request(["true"]) for _ in range(25_000)]
    assert [end - start for start, end in jobfile.chunks(requests)] == [10_000, 10_000, 5_000]


def test_big_jobs_are_sent_in_batches_under_the_daemons_message_limit() -> None:
    requests = [Client.submit_request(["echo", "x" * (1 << 20)]) for _ in range(20)]
    ranges = list(jobfile.chunks(requests))
    assert ranges[0][0] == 0 and ranges[-1][1] == 20
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    for start, end in ranges:
        assert jobs_pb2.SubmitBatchRequest(jobs=requests[start:end]).ByteSize() < 8 << 20


# -- against a daemon -------------------------------------------------------------------------


def test_a_first_success_group_stops_the_other_members_and_watch_exits_0(
        capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    s = daemon.config.socket
    group = ["--group", "try", "--group-mode", "first-success"]
    slow = ctl(capsys, "submit", *group, "--", "sleep", "30", socket=s).out.strip()
    fast = ctl(capsys, "submit", *group, "--", PY, "-c", "print('won')", socket=s).out.strip()
    queued = ctl(capsys, "submit", *group, "--", "sleep", "30", socket=s).out.strip()

    watch = ctl(capsys, "group", "watch", "try", socket=s)
    assert watch.code == 0, watch.err
    assert fast in watch.out and "sibling-succeeded" in watch.out

    shown = ctl(capsys, "group", "get", "try", socket=s).out
    assert "first-success" in shown and "ended (sibling-succeeded), 1 succeeded" in shown
    rows = {line.split()[0]: line.split() for line in shown.splitlines() if line[:1].isalnum() and " " in line}
    assert rows[fast][2:5] == ["SUCCEEDED", "-", "0"]
    assert rows[slow][2:4] == ["CANCELLED", "sibling-succeeded"]
    assert rows[queued][2:4] == ["CANCELLED", "sibling-succeeded"]
    assert ctl(capsys, "logs", fast, socket=s).out == "won\n"


def test_group_watch_exits_1_when_no_member_succeeds(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    s = daemon.config.socket
    for _ in range(2):
        ctl(capsys, "submit", "--group", "doomed", "--group-mode", "first-success", "--", "false", socket=s)
    watch = ctl(capsys, "group", "watch", "doomed", socket=s)
    assert watch.code == 1, watch.err
    assert watch.out.count("FAILED") == 2


def test_group_list_shows_a_group_and_cancel_ends_it(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    s = daemon.config.socket
    ids = [ctl(capsys, "submit", "--group", "sweep", "--group-budget", "500", "--", "sleep", "30", socket=s).out.strip()
           for _ in range(3)]
    listed = ctl(capsys, "group", "list", socket=s).out.splitlines()
    assert listed[0].split()[:3] == ["GROUP", "TENANT", "MODE"]
    assert listed[1].split()[0] == "sweep" and "500 GPU-s" in listed[1] and "open" in listed[1]

    cancelled = ctl(capsys, "group", "cancel", "sweep", socket=s)
    assert cancelled.code == 0 and "ended (cancelled-by-user)" in cancelled.out
    # Running members stop after the reply; watch follows them until they have.
    assert ctl(capsys, "group", "watch", "sweep", socket=s).code == 1
    data = json.loads(ctl(capsys, "-o", "json", "group", "get", "sweep", socket=s).out)
    assert (data["state"], data["reason"], data["budget_gpu_s"]) == ("ended", "cancelled-by-user", 500)
    assert [m["id"] for m in data["members"]] == ids
    assert {m["state"] for m in data["members"]} == {"CANCELLED"}
    assert {m["group"] for m in data["members"]} == {"sweep"}


def test_an_unknown_group_exits_1_naming_it(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    result = ctl(capsys, "group", "get", "nothing-here", socket=daemon.config.socket)
    assert result.code == 1 and "NOT_FOUND" in one_line(result.err) and "nothing-here" in result.err


def test_dedupe_returns_the_same_job_marked_as_a_duplicate(capsys: pytest.CaptureFixture[str], daemon: Daemon,
                                                           tmp_path: Path) -> None:
    s = daemon.config.socket
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n")
    submit = ("submit", "--dedupe", "--dedupe-input", str(data), "--", "sleep", "30")
    first = ctl(capsys, *submit, socket=s).out.strip()
    again = ctl(capsys, *submit, socket=s).out.strip()
    assert again == f"{first} (duplicate of an existing job)"
    assert json.loads(ctl(capsys, "-o", "json", *submit, socket=s).out)["duplicate"] is True

    data.write_text("a,b\n1,3\n")
    changed = ctl(capsys, *submit, socket=s).out.strip()
    assert changed != first and "duplicate" not in changed


def test_a_dedupe_env_variable_is_part_of_the_work(capsys: pytest.CaptureFixture[str], daemon: Daemon,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    s = daemon.config.socket
    submit = ("submit", "--dedupe", "--dedupe-env", "LR", "--", "sleep", "30")
    monkeypatch.setenv("LR", "0.1")
    first = ctl(capsys, *submit, socket=s).out.split()[0]
    assert ctl(capsys, *submit, socket=s).out.split()[0] == first
    monkeypatch.setenv("LR", "0.2")
    assert ctl(capsys, *submit, socket=s).out.split()[0] != first


def test_a_dedupe_key_returns_the_same_job(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    s = daemon.config.socket
    first = ctl(capsys, "submit", "--dedupe-key", "eval-42", "--", "sleep", "30", socket=s).out.strip()
    second = ctl(capsys, "submit", "--dedupe-key", "eval-42", "--", "sleep", "31", socket=s).out.strip()
    assert second == f"{first} (duplicate of an existing job)"


def test_from_file_submits_every_line_and_prints_one_id_per_line(
        capsys: pytest.CaptureFixture[str], daemon: Daemon, tmp_path: Path) -> None:
    s = daemon.config.socket
    path = tmp_path / "jobs.jsonl"
    lines = [
        {"command": ["sleep", "30"], "name": "a", "priority": "high"},
        {"command": ["sleep", "30"], "name": "b", "gpu_fraction": 0.5, "group": "bulk", "group_mode": "best-of:2"},
        {"command": ["sleep", "30"], "name": "c", "group": "bulk", "group_mode": "best-of:2", "env": {"SEED": "3"}},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines[:2]) + "\n" + json.dumps(lines[2]) + "\n")
    result = ctl(capsys, "submit", "--from-file", str(path), socket=s)
    assert result.code == 0, result.err
    ids = result.out.split()
    assert len(ids) == 3
    jobs = [json.loads(ctl(capsys, "-o", "json", "get", job_id, socket=s).out) for job_id in ids]
    assert [j["name"] for j in jobs] == ["a", "b", "c"]
    assert jobs[0]["priority"] == "high" and jobs[1]["requested"] == {"gpu_fraction": 0.5}
    assert [j["group"] for j in jobs] == ["", "bulk", "bulk"]
    group = json.loads(ctl(capsys, "-o", "json", "group", "get", "bulk", socket=s).out)
    assert group["mode"] == "best-of:2" and [m["id"] for m in group["members"]] == ids[1:]


def test_from_file_reads_stdin_applies_the_command_lines_group_and_prints_json_lines(
        capsys: pytest.CaptureFixture[str], daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    s = daemon.config.socket
    monkeypatch.setattr("sys.stdin", io.StringIO('{"command": ["true"]}\n{"command": ["true"]}\n'))
    result = ctl(capsys, "-o", "json", "submit", "--group", "piped", "--group-mode", "all", "--from-file", "-",
                 socket=s)
    assert result.code == 0, result.err
    submitted = [json.loads(line) for line in result.out.splitlines()]
    assert [(r["line"], r["duplicate"]) for r in submitted] == [(1, False), (2, False)]
    group = json.loads(ctl(capsys, "-o", "json", "group", "get", "piped", socket=s).out)
    assert [m["id"] for m in group["members"]] == [r["id"] for r in submitted]


def test_a_malformed_line_sends_none_of_the_file(capsys: pytest.CaptureFixture[str], daemon: Daemon,
                                                 tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"command": ["true"]}\n{"command": ["true"], "gpus": -1}\n')
    result = ctl(capsys, "submit", "--from-file", str(path), socket=daemon.config.socket)
    assert result.code == 2 and "line 2: gpus" in one_line(result.err)
    assert ctl(capsys, "list", socket=daemon.config.socket).out.splitlines()[1:] == []


def test_a_job_the_daemon_refuses_is_named_by_its_line(capsys: pytest.CaptureFixture[str], daemon: Daemon,
                                                       tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    # This daemon has two GPUs: line 3 asks for more, so the batch is refused and nothing starts.
    path.write_text('{"command": ["true"]}\n\n{"command": ["true"], "gpus": 3}\n')
    result = ctl(capsys, "submit", "--from-file", str(path), socket=daemon.config.socket)
    assert result.code == 1
    assert f"{path} line 3: resources.gpus" in one_line(result.err)
    assert ctl(capsys, "list", socket=daemon.config.socket).out.splitlines()[1:] == []


def test_set_priority_changes_a_pending_jobs_priority(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    s = daemon.config.socket
    for _ in range(2):
        ctl(capsys, "submit", "--gpus", "1", "--", "sleep", "30", socket=s)
    waiting = ctl(capsys, "submit", "--gpus", "1", "--priority", "low", "--", "sleep", "30", socket=s).out.strip()
    result = ctl(capsys, "set-priority", waiting, "high", socket=s)
    assert result.code == 0, result.err
    assert result.out.split() == [waiting, "PENDING", "priority", "high"]
    assert json.loads(ctl(capsys, "-o", "json", "get", waiting, socket=s).out)["priority"] == "high"


def test_stop_of_a_process_job_is_refused_with_one_line(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    s = daemon.config.socket
    job = ctl(capsys, "submit", "--", "sleep", "30", socket=s).out.strip()
    result = ctl(capsys, "stop", job, socket=s)
    assert result.code == 1 and "FAILED_PRECONDITION" in one_line(result.err) and "kernel" in result.err
