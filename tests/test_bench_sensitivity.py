"""bench/sensitivity.py: every policy across interference x preemption cost, as ratios to FIFO."""

from __future__ import annotations

import subprocess
import sys

from gpuos.scheduler import available
from tests.conftest import ROOT


def _quick() -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "sensitivity.py"), "--quick"],
                          capture_output=True, text=True, timeout=300, cwd=str(ROOT))


def _row(table: str, policy: str) -> list[list[float]]:
    """One policy's row of a printed table: per interference column, the ratio at each cost."""
    line = next(line for line in table.splitlines() if line.startswith(f"| {policy} |"))
    cells = [cell.strip() for cell in line.strip("|").split("|")][1:]
    return [[float(v) for v in cell.split(" / ")] for cell in cells]


def test_quick_grid_prints_its_command_and_a_row_per_policy_against_fifo() -> None:
    result = _quick()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Command: `python bench/sensitivity.py --quick`" in out and "Window: `synthetic:bursty" in out
    jct = out.split("p99 queueing / FIFO's")[0]
    # Other tests register policies of their own in this process; the script sees the shipped ones.
    shipped = [name for name, cls in available().items() if cls.__module__.startswith("gpuos.scheduler.policies.")]
    for name in shipped:
        if name == "gandiva":
            assert "Left out: gandiva" in out
        else:
            assert f"| {name} |" in jct
    assert _row(jct, "fifo") == [[1.0, 1.0], [1.0, 1.0]]


def test_a_costlier_restart_hurts_a_preemptive_policy_against_fifo() -> None:
    jct = _quick().stdout.split("p99 queueing / FIFO's")[0]
    # SRTF preempts; FIFO never does, so only SRTF pays the 120 s restarts (columns: 10 s / 120 s).
    for cheap, costly in _row(jct, "srtf"):
        assert costly > cheap
