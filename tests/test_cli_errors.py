"""A bad command-line value, or a bad setting, ends in one line and exit 2, never a traceback;
output cut by a closed pipe ends quietly (issue 10, items 8 and 11)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpuos.cli.main import build_parser, run
from tests.conftest import DaemonProcess

PY = sys.executable
CTL = [PY, "-m", "gpuos.cli.main"]

# (flag named in the message, argv). Each value is refused before anything is sent, so no daemon
# is needed; the socket is one where none listens.
BAD_VALUES = [
    ("--limit", ["list", "--limit", "-1"]),
    ("--limit", ["list", "--limit", "ten"]),
    ("--gpus", ["submit", "--gpus", "-1", "--", "true"]),
    ("--gpus", ["submit", "--gpus", "0", "--", "true"]),
    ("--gpus", ["submit", "--gpus", "99999999999999999999", "--", "true"]),
    ("--gpu-fraction", ["submit", "--gpu-fraction", "2", "--", "true"]),
    ("--gpu-fraction", ["submit", "--gpu-fraction", "nan", "--", "true"]),
    ("--gpu-fraction", ["submit", "--gpu-fraction", "0", "--", "true"]),
    ("--gpu-fraction", ["submit", "--gpu-fraction", "-inf", "--", "true"]),
    ("--memory", ["submit", "--memory", "10EiB", "--", "true"]),
    ("--memory", ["submit", "--memory", "12QB", "--", "true"]),
    ("--memory", ["submit", "--memory", "9" * 400, "--", "true"]),
    ("--memory", ["submit", "--memory", "99999999999999999999999", "--", "true"]),
    ("--memory", ["submit", "--memory", "0", "--", "true"]),
    ("--estimate", ["submit", "--estimate", "-1", "--", "true"]),
    ("--estimate", ["submit", "--estimate", "inf", "--", "true"]),
    ("--env", ["submit", "--env", "NOEQUALS", "--", "true"]),
    ("--env", ["submit", "--env", "=value", "--", "true"]),
    ("--param", ["submit", "--kernel", "radial-dit", "--param", "x"]),
    ("--since", ["events", "--since", "-1"]),
    ("--since", ["events", "--since", "99999999999999999999999"]),
    ("--interval", ["top", "--interval", "-1"]),
    ("--interval", ["top", "--interval", "nan"]),
    ("--interval", ["top", "--interval", "0"]),
    ("--iterations", ["top", "--iterations", "-1"]),
    ("--timeout", ["wait", "abc", "--timeout", "-1"]),
    ("--timeout", ["wait", "abc", "--timeout", "nan"]),
    ("gpu", ["fault", "gpu-fail", "-1"]),
    ("gpu", ["fault", "gpu-fail", "99999999999999999999"]),
    ("--seed", ["sim", "--trace", "x", "--seed", "-1"]),
    ("--horizon", ["sim", "--trace", "x", "--horizon", "nan"]),
    ("--failures-per-gpu-hour", ["sim", "--trace", "x", "--failures-per-gpu-hour", "-1"]),
    ("--interference", ["sim", "--trace", "x", "--interference", "-0.1"]),
    ("--context-switch", ["sim", "--trace", "x", "--context-switch", "nan"]),
    ("--preemption-cost", ["sim", "--trace", "x", "--preemption-cost", "-30"]),
    ("--preemption-cost", ["sim", "--trace", "x", "--preemption-cost", "ten"]),
    ("--iterations", ["evolve", "--iterations", "-1"]),
    ("--population", ["evolve", "--population", "0"]),
]


def ctl(*args: str, socket: str = "/nonexistent/gpuos.sock") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CTL, "--socket", socket, *args], capture_output=True, text=True, timeout=60, cwd="/")


def assert_one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpuosctl: "), err
    return lines[0]


@pytest.mark.parametrize("flag, argv", BAD_VALUES, ids=[" ".join(a) for _, a in BAD_VALUES])
def test_a_bad_value_exits_2_with_one_line_naming_the_flag(flag: str, argv: list[str]) -> None:
    result = ctl(*argv)
    assert result.returncode == 2, result.stderr
    line = assert_one_line(result.stderr)
    assert line.startswith(f"gpuosctl: {flag}: "), line
    assert result.stdout == ""


def test_an_unknown_command_exits_2_with_one_line() -> None:
    result = ctl("frobnicate")
    assert result.returncode == 2 and "frobnicate" in assert_one_line(result.stderr)


def test_a_command_after_dashes_for_another_subcommand_exits_2_with_one_line() -> None:
    result = ctl("list", "--", "true")
    assert result.returncode == 2 and "only for submit" in assert_one_line(result.stderr)


def test_submit_without_a_command_or_kernel_exits_2_with_one_line() -> None:
    result = ctl("submit")
    assert result.returncode == 2 and "--kernel" in assert_one_line(result.stderr)


def test_help_still_prints_usage_and_exits_0() -> None:
    result = ctl("submit", "--help")
    assert result.returncode == 0 and "--gpu-fraction" in result.stdout


def test_a_value_the_client_refuses_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # Client.submit checks its arguments itself (ValueError) before anything is sent.
    args = build_parser().parse_args(["--socket", "/nonexistent/gpuos.sock", "submit", "--no-env"])
    args.priority = "urgent"  # argparse's choices keep it out; a caller of run() need not
    assert run(args, ["true"]) == 2
    line = assert_one_line(capsys.readouterr().err)
    assert "priority" in line and "urgent" in line


# -- gpuosd's settings are type-checked at start -------------------------------------------------

BAD_SETTINGS = [
    ('kill_grace_seconds = "5"', "kill_grace_seconds", "number"),
    ("socket_mode = 666", "socket_mode", "octal"),
    ('admins = "root"', "admins", "list"),
]


@pytest.mark.parametrize("line, key, expected", BAD_SETTINGS, ids=[k for _, k, _ in BAD_SETTINGS])
def test_a_mistyped_setting_stops_gpuosd_with_one_line(short_dir: Path, line: str, key: str, expected: str) -> None:
    config = short_dir / "gpuosd.toml"
    config.write_text(line + "\n")
    result = subprocess.run(
        [PY, "-m", "gpuos.daemon.main", "--config", str(config), "--backend", "sim",
         "--socket", str(short_dir / "s.sock"), "--state-dir", str(short_dir / "state")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gpuosd: {key}: ") and expected in lines[0], result.stderr
    assert not (short_dir / "s.sock").exists()


# -- a closed pipe ends output quietly ----------------------------------------------------------


def closed_pipe_run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run gpuosctl with its stdout a pipe whose reader is gone before it writes a byte."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(argv, stdout=write, stderr=subprocess.PIPE, text=True, timeout=60, cwd="/")
    finally:
        os.close(write)


def test_kernels_into_a_closed_pipe_ends_quietly_with_141() -> None:
    result = closed_pipe_run([*CTL, "kernels"])
    assert result.returncode == 141 and result.stderr == ""


def test_kernels_into_head_prints_one_line_and_nothing_on_stderr() -> None:
    result = subprocess.run(f"{PY} -m gpuos.cli.main kernels | head -1", shell=True, capture_output=True,
                            text=True, timeout=60)
    assert len(result.stdout.splitlines()) == 1 and result.stderr == ""


@pytest.mark.parametrize("argv", [["list"], ["events"], ["logs", "{job}"]], ids=["list", "events", "logs"])
def test_daemon_output_into_a_closed_pipe_ends_quietly(gpuosd: DaemonProcess, argv: list[str]) -> None:
    submitted = gpuosd.ctl("submit", "--wait", "--", PY, "-c", "print('x' * 100000)")
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.split()[0]
    result = closed_pipe_run([*CTL, "--socket", gpuosd.socket, *(a.format(job=job) for a in argv)])
    assert result.returncode == 141 and result.stderr == ""
