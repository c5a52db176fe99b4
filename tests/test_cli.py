"""gpuosctl as a user runs it: a subprocess against a real daemon."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import DaemonProcess

PY = sys.executable


def test_submit_prints_the_job_id_and_get_shows_it(gpuosd: DaemonProcess) -> None:
    result = gpuosd.ctl("submit", "--name", "hello", "--", PY, "-c", "print('hi')")
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip()
    assert gpuosd.ctl("wait", job).returncode == 0
    table = gpuosd.ctl("get", job).stdout
    assert job in table and "SUCCEEDED" in table and "hello" in table


def test_get_json_has_the_documented_fields(gpuosd: DaemonProcess) -> None:
    job = gpuosd.ctl("submit", "--gpu-fraction", "0.5", "--memory", "8GiB", "--", PY, "-c", "pass").stdout.strip()
    gpuosd.ctl("wait", job)
    data = json.loads(gpuosd.ctl("-o", "json", "get", job).stdout)
    for field in ("id", "name", "state", "reason", "exit_code", "tenant", "device", "partition", "requested",
                  "granted", "created_at", "started_at", "finished_at"):
        assert field in data, field
    assert data["requested"] == {"gpu_fraction": 0.5, "memory_bytes": 8 * 1024**3}
    assert data["partition"] == "mps" and data["exit_code"] == 0


def test_wait_exits_with_the_jobs_exit_code(gpuosd: DaemonProcess) -> None:
    job = gpuosd.ctl("submit", "--", PY, "-c", "raise SystemExit(42)").stdout.strip()
    assert gpuosd.ctl("wait", job).returncode == 42


def test_submit_wait_runs_in_the_callers_directory_with_its_environment(gpuosd: DaemonProcess) -> None:
    result = subprocess.run(
        [PY, "-m", "gpuos.cli.main", "--socket", gpuosd.socket, "submit", "--wait", "--env", "EXTRA=1", "--",
         PY, "-c", "import os; print(os.getcwd(), os.environ['MARK'], os.environ['EXTRA'])"],
        capture_output=True, text=True, cwd=str(gpuosd.base), env={**__import__("os").environ, "MARK": "yes"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    job = result.stdout.split()[0]
    assert gpuosd.ctl("logs", job).stdout.strip() == f"{gpuosd.base} yes 1"


def test_logs_follow_prints_output_as_it_comes(gpuosd: DaemonProcess) -> None:
    job = gpuosd.ctl("submit", "--", PY, "-u", "-c", "print('a'); import sys; print('b', file=sys.stderr)").stdout.strip()
    result = gpuosd.ctl("logs", "-f", job)
    assert result.stdout == "a\n" and result.stderr == "b\n"


def test_list_filters_by_state_and_prints_a_table(gpuosd: DaemonProcess) -> None:
    job = gpuosd.ctl("submit", "--", PY, "-c", "pass").stdout.strip()
    gpuosd.ctl("wait", job)
    out = gpuosd.ctl("list", "--state", "succeeded").stdout
    assert out.splitlines()[0].split()[:3] == ["ID", "NAME", "STATE"]
    assert job in out
    assert job not in gpuosd.ctl("list", "--state", "failed").stdout


def test_cancel_reports_the_final_state(gpuosd: DaemonProcess) -> None:
    job = gpuosd.ctl("submit", "--", "sleep", "60").stdout.strip()
    result = gpuosd.ctl("cancel", job)
    assert result.returncode == 0 and "CANCELLED" in result.stdout


def test_events_lists_the_lifecycle(gpuosd: DaemonProcess) -> None:
    job = gpuosd.ctl("submit", "--", PY, "-c", "pass").stdout.strip()
    gpuosd.ctl("wait", job)
    lines = [line for line in gpuosd.ctl("events", "--job", job).stdout.splitlines() if job in line]
    assert [line.split()[2] for line in lines] == ["submitted", "started", "succeeded"]


def test_devices_shows_each_gpu(gpuosd: DaemonProcess) -> None:
    out = gpuosd.ctl("devices").stdout
    assert out.count("H100-80GB") == 2 and "backend: sim" in out


def test_policy_list_marks_the_active_policy(gpuosd: DaemonProcess) -> None:
    out = gpuosd.ctl("policy", "list").stdout
    assert any(line.startswith("*") and "fifo" in line for line in out.splitlines())
    assert gpuosd.ctl("policy", "set", "fifo").stdout.strip() == "policy is now fifo"


def test_a_refused_request_exits_non_zero_with_one_line(gpuosd: DaemonProcess) -> None:
    # The daemon refuses it (this machine has 2 GPUs); a value argparse can refuse exits 2 instead.
    result = gpuosd.ctl("submit", "--gpus", "3", "--", "true")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "resources.gpus" in result.stderr


def test_an_unknown_job_exits_non_zero(gpuosd: DaemonProcess) -> None:
    result = gpuosd.ctl("get", "abcdef")
    assert result.returncode == 1 and "NOT_FOUND" in result.stderr


def test_no_daemon_is_a_clear_error(short_dir) -> None:  # type: ignore[no-untyped-def]
    result = subprocess.run([PY, "-m", "gpuos.cli.main", "--socket", str(short_dir / "none.sock"), "list"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr


def test_top_shows_devices_and_jobs_and_refreshes(gpuosd: DaemonProcess) -> None:
    job = gpuosd.ctl("submit", "--", "sleep", "30").stdout.strip()
    out = gpuosd.ctl("top", "--interval", "0.2", "--iterations", "2").stdout
    assert out.count("policy fifo") == 2
    assert out.count("H100-80GB") == 4 and job in out
    gpuosd.ctl("cancel", job)


def _gpuosctl(*args: str, cwd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "gpuos.cli.main", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_sim_prints_a_table_per_policy_and_writes_their_plots(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = _gpuosctl("sim", "--trace", "synthetic:bursty?n=300&seed=3", "--policy", "fifo", "--policy", "sjf",
                       "--plot", str(tmp_path / "run.png"), cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "policy fifo" in result.stdout and "policy sjf" in result.stdout and "makespan" in result.stdout
    for name in ("run-fifo.png", "run-sjf.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sim_json_reports_metrics_per_class(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = _gpuosctl("-o", "json", "sim", "--trace", "synthetic:llm-decode?n=200&seed=1", cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    (run,) = json.loads(result.stdout)
    assert run["policy"] == "fifo" and run["jobs"] == 200
    assert any(c["qos"] == "all" and c["finished"] == run["finished"] for c in run["classes"])
    assert not list(tmp_path.glob("*.png"))


def test_sim_writes_no_plot_unless_asked_and_says_no_plot_is_gone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    quiet = _gpuosctl("sim", "--trace", "synthetic:bursty?n=50&seed=3", cwd=str(tmp_path))
    assert quiet.returncode == 0, quiet.stderr
    assert "policy fifo" in quiet.stdout and "plot:" not in quiet.stdout
    assert not list(tmp_path.iterdir())
    old = _gpuosctl("sim", "--trace", "synthetic:bursty?n=50&seed=3", "--no-plot", cwd=str(tmp_path))
    assert old.returncode == 2 and "--plot PATH" in old.stderr
    assert len(old.stderr.strip().splitlines()) == 1


def test_sim_refuses_an_unknown_trace_or_policy_in_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad_trace = _gpuosctl("sim", "--trace", "no-such-trace", cwd=str(tmp_path))
    assert bad_trace.returncode == 1 and "no-such-trace" in bad_trace.stderr
    bad_policy = _gpuosctl("sim", "--trace", "synthetic:bursty?n=10", "--policy", "nope", cwd=str(tmp_path))
    assert bad_policy.returncode == 1 and "unknown policy 'nope'" in bad_policy.stderr
    assert len(bad_policy.stderr.strip().splitlines()) == 1


POD_LIST_HEADER = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time"


def _pod_list(tmp_path, *rows: str) -> str:  # type: ignore[no-untyped-def]
    (tmp_path / "openb_node_list_gpu_node.csv").write_text("sn,cpu_milli,memory_mib,gpu,model\nn0,96000,393216,1,G2\n")
    path = tmp_path / "pods.csv"
    path.write_text("\n".join((POD_LIST_HEADER, *rows)) + "\n")
    return str(path)


def _jct_mean(tmp_path, *args: str) -> float:  # type: ignore[no-untyped-def]
    result = _gpuosctl("-o", "json", "sim", *args, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    (run,) = json.loads(result.stdout)
    return float(next(c["jct_mean"] for c in run["classes"] if c["qos"] == "all"))


def test_sim_interference_slows_two_half_gpu_shares_by_the_mps_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace = _pod_list(tmp_path, "a,1000,1024,1,500,,BE,Running,0,100,0", "b,1000,1024,1,500,,BE,Running,0,100,0")
    # Each share runs at 1 / (1 + 0.4 x 0.5) beside the other: 100 s of work takes 120 s.
    assert _jct_mean(tmp_path, "--trace", trace, "--interference", "0.4") == 120


def test_sim_preemption_cost_is_extra_work_for_the_preempted_job(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace = _pod_list(tmp_path, "be,1000,1024,1,1000,,BE,Running,0,100,0", "ls,1000,1024,1,1000,,LS,Running,10,15,10")
    # ls preempts be at 10 s and is done at 15 s; be resumes with 90 s left plus 50 s of restart.
    jct = _jct_mean(tmp_path, "--trace", trace, "--policy", "priority", "--preemption-cost", "50")
    assert jct == (5 + (15 + 90 + 50)) / 2


def test_sim_context_switch_cost_slows_time_sliced_jobs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace = "synthetic:llm-decode?n=200&seed=1"
    free = _jct_mean(tmp_path, "--trace", trace, "--context-switch", "0")
    costly = _jct_mean(tmp_path, "--trace", trace, "--context-switch", "0.5")
    assert costly > free


def test_sim_suspend_moves_the_victims_memory_over_the_host_link_instead_of_restarting(tmp_path) -> None:  # type: ignore[no-untyped-def]
    trace = _pod_list(tmp_path, "be,1000,1024,1,1000,,BE,Running,0,100,0", "ls,1000,1024,1,1000,,LS,Running,10,15,10")
    # be holds its GPU while its whole memory (the G2's 32 GiB) leaves at 25 GB/s, then ls runs
    # 5 s, then be's memory comes back at the same rate and its 90 s of work resume: no restart.
    move = 32 * 1024**3 / 25e9
    jct = _jct_mean(tmp_path, "--trace", trace, "--policy", "priority", "--preemption-cost", "50", "--suspend")
    assert abs(jct - ((5 + move) + (10 + move + 5 + move + 90)) / 2) < 1e-6
    refused = _gpuosctl("sim", "--trace", trace, "--oversubscription", "2", cwd=str(tmp_path))
    assert refused.returncode == 2 and "--oversubscription" in refused.stderr and refused.stderr.count("\n") == 1
