"""The per-GPU kernel executor: its priority gate, its admission, its wire format, its client.

The gate is driven by threads alone. The executor runs in-process with a fake kernel (atoms are
calls of ``ctx.between_atoms()``) where atom order must be exact, and as a subprocess serving
real clients running the real vattention kernel (tiny shapes, Triton's interpreter) end to end.
No assertion depends on timing: waits poll for a state, with a generous deadline.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil
import pytest

from gpuos.errors import InvalidArgument
from gpuos.kernels import executor_control as control
from gpuos.kernels.executor import Device, Executor, ExecutorStartError
from gpuos.kernels.executor_wire import (
    CONTROL_REPLIES,
    CONTROL_REQUESTS,
    JOB_REPLIES,
    Accepted,
    Done,
    Error,
    Failed,
    LineReader,
    Message,
    Pause,
    Paused,
    Ping,
    Resume,
    Submit,
    WireError,
    decode,
    encode,
)
from gpuos.kernels.gate import Cancelled, PriorityGate
from gpuos.kernels.registry import KernelCost, KernelSpec, Param
from gpuos.kernels.worker import read_progress

DEADLINE = 30.0


def _until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.005)


# --- the gate --------------------------------------------------------------------------------

def _in_thread(target: Callable[..., object], *args: object) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def _one_atom(gate: PriorityGate, job: str) -> None:
    gate.enter(job)
    gate.leave(job)


def test_a_waiting_high_priority_job_takes_the_next_atom_ahead_of_earlier_waiters() -> None:
    grants: list[str] = []
    gate = PriorityGate(on_grant=grants.append)
    for job, priority in (("low", "low"), ("normal", "normal"), ("high", "high")):
        gate.add(job, priority)
    gate.enter("low")
    waiters = [_in_thread(_one_atom, gate, job) for job in ("normal", "high")]
    _until(lambda: gate.waiting("normal") and gate.waiting("high"), "both queue")
    gate.boundary("low")  # a lower-priority job's boundary hands over ...
    for thread in waiters:
        thread.join(DEADLINE)
    gate.leave("low")
    assert grants == ["low", "high", "normal", "low"]


def test_the_holder_keeps_the_gate_while_only_lower_priorities_wait() -> None:
    grants: list[str] = []
    gate = PriorityGate(on_grant=grants.append)
    gate.add("high", "high")
    gate.add("low", "low")
    gate.enter("high")
    waiter = _in_thread(_one_atom, gate, "low")
    _until(lambda: gate.waiting("low"), "low queues")
    for _ in range(3):
        gate.boundary("high")
    assert gate.holder() == "high" and gate.waiting("low")
    gate.leave("high")
    waiter.join(DEADLINE)
    assert grants == ["high"] * 4 + ["low"]


def test_jobs_of_equal_priority_take_turns_atom_by_atom() -> None:
    grants: list[str] = []
    gate = PriorityGate(on_grant=grants.append)
    gate.add("a", "normal")
    gate.add("b", "normal")

    def atoms(job: str) -> None:
        for _ in range(4):
            gate.boundary(job)
        gate.leave(job)

    gate.enter("a")
    def b_atoms() -> None:
        gate.enter("b")
        atoms("b")

    b = _in_thread(b_atoms)
    _until(lambda: gate.waiting("b"), "b queues")
    a = _in_thread(atoms, "a")
    a.join(DEADLINE)
    b.join(DEADLINE)
    assert grants == ["a", "b"] * 5


def test_a_paused_job_takes_no_atoms_and_resumes_at_the_next_boundary() -> None:
    grants: list[str] = []
    parked = threading.Event()
    gate = PriorityGate(on_grant=grants.append)
    gate.add("high", "high")
    gate.add("low", "low")
    gate.enter("high")
    gate.pause("high")
    def high_atoms() -> None:
        gate.boundary("high", on_park=parked.set)
        gate.leave("high")

    high = _in_thread(high_atoms)
    assert parked.wait(DEADLINE)  # it let go of the gate and said so
    gate.enter("low")  # the paused job does not stand in a lower one's way
    gate.boundary("low")
    gate.resume("high")
    gate.boundary("low")  # the resumed high job takes over here
    high.join(DEADLINE)
    gate.leave("low")
    assert grants == ["high", "low", "low", "high", "low"]


def test_a_cancelled_job_raises_at_its_next_boundary_or_while_it_waits() -> None:
    gate = PriorityGate()
    gate.add("holder", "normal")
    gate.add("waiter", "normal")
    gate.enter("holder")
    raised: list[BaseException] = []

    def wait() -> None:
        try:
            gate.enter("waiter")
        except Cancelled as exc:
            raised.append(exc)

    thread = _in_thread(wait)
    _until(lambda: gate.waiting("waiter"), "the waiter queues")
    gate.cancel("waiter", "client gone")
    thread.join(DEADLINE)
    assert [str(e) for e in raised] == ["job waiter cancelled: client gone"]
    gate.cancel("holder", "revoked")
    with pytest.raises(Cancelled, match="revoked"):
        gate.boundary("holder")
    assert gate.holder() is None  # its cancellation gave the GPU back


# --- the wire format -------------------------------------------------------------------------

@pytest.mark.parametrize(("line", "problem"), [
    (b"hello", "not a JSON object"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"v": 2, "type": "ping"}', "v: protocol version 2 is not supported"),
    (b'{"v": 1, "type": "launch"}', "type: 'launch' is not one of"),
    (b'{"v": 1, "type": "ping", "extra": 1}', "extra: no such field"),
    (b'{"v": 1, "type": "revoke"}', "job_id: missing"),
    (b'{"v": 1, "type": "admit", "job_id": "j", "token": "t", "tenant": "", "priority": "high", '
     b'"memory_limit": 0, "kernel": "k"}', "token: must be at least 16 characters"),
    (b'{"v": 1, "type": "admit", "job_id": "j", "token": "tttttttttttttttt", "tenant": "", '
     b'"priority": "urgent", "memory_limit": 0, "kernel": "k"}', "priority: 'urgent' is not one of"),
    (b'{"v": 1, "type": "admit", "job_id": "j", "token": "tttttttttttttttt", "tenant": "", '
     b'"priority": "low", "memory_limit": true, "kernel": "k"}', "memory_limit: want an integer, got a boolean"),
])
def test_a_malformed_line_is_refused_naming_what_is_wrong(line: bytes, problem: str) -> None:
    with pytest.raises(WireError, match=problem):
        decode(line, CONTROL_REQUESTS)


def test_a_message_round_trips_and_numbers_stay_finite() -> None:
    submit = Submit(job_id="j", token="t", kernel="k", params={"steps": "3"}, seed=7)
    assert decode(encode(submit), (Submit,)) == submit
    with pytest.raises(WireError, match="latency_s: want a finite number"):
        decode(b'{"v": 1, "type": "progress", "step": 0, "latency_s": NaN}', JOB_REPLIES)


# --- the executor, in-process, with a fake kernel ---------------------------------------------

HOLDS: dict[int, threading.Event] = {}  # by seed: a job waits inside its second atom until set
REACHED: dict[int, threading.Event] = {}


def fake_run(params: Mapping[str, Any], ctx: Any) -> dict[str, float]:
    """A kernel whose atoms do nothing: ``atoms`` per step, ``ctx.between_atoms()`` after each."""
    for step in range(int(params["steps"])):
        for atom in range(int(params["atoms"])):
            if params["hold"] and step == 0 and atom == 1:
                REACHED[ctx.seed].set()
                HOLDS[ctx.seed].wait(DEADLINE)
            ctx.between_atoms()
        ctx.report(step, 0.001)
    return {"atoms": float(params["steps"] * params["atoms"])}


FAKE = KernelSpec(
    name="fake-atoms", description="test kernel",
    params=(Param("atoms", "int", 3, minimum=1, maximum=100), Param("steps", "int", 2, minimum=1, maximum=100),
            Param("memory", "int", 0, minimum=0), Param("hold", "bool", False)),
    cost=lambda p: KernelCost(0.0, 0.0, int(p["memory"])),
    runner=f"{__name__}:fake_run",
)


def _lookup(name: str) -> KernelSpec:
    if name == FAKE.name:
        return FAKE
    raise InvalidArgument("kernel", f"unknown kernel {name!r}")


class _Client:
    """The executor's job protocol spoken by hand."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(DEADLINE)
        self.sock.connect(path)
        self.reader = LineReader(self.sock)

    def send(self, message: Message) -> None:
        self.sock.sendall(encode(message))

    def recv(self) -> Message | None:
        line = self.reader.read_line()
        return None if line is None else decode(line, JOB_REPLIES)

    def result(self) -> Message:
        while True:
            message = self.recv()
            assert message is not None, "connection closed without a result"
            if not isinstance(message, (Accepted, Paused)) and message.TYPE != "progress":
                return message


@pytest.fixture
def executor(short_dir: Path) -> Iterator[Executor]:
    grants: list[str] = []
    lines: list[str] = []
    ex = Executor(str(short_dir / "x.sock"), lookup=_lookup, device=Device("cpu", False), on_grant=grants.append,
                  log=lines.append)
    ex.start()
    ex.grants, ex.lines = grants, lines  # type: ignore[attr-defined]
    HOLDS.clear()
    REACHED.clear()
    yield ex
    for hold in HOLDS.values():
        hold.set()
    ex.shutdown(grace=DEADLINE)


def _admit(ex: Executor, job_id: str, priority: str = "normal", memory_limit: int = 0, kernel: str = FAKE.name) -> str:
    token = control.new_token()
    control.admit(ex.control_path, job_id=job_id, token=token, tenant="alice", priority=priority,
                  memory_limit=memory_limit, kernel=kernel)
    return token


def _submit(ex: Executor, job_id: str, token: str, seed: int = 0, **params: object) -> _Client:
    client = _Client(ex.socket_path)
    client.send(Submit(job_id=job_id, token=token, kernel=FAKE.name,
                       params={k: str(v).lower() for k, v in params.items()}, seed=seed))
    return client


def test_a_high_priority_job_gets_its_first_atom_before_the_low_jobs_next_atom(executor: Executor) -> None:
    low_token, high_token = _admit(executor, "L", "low"), _admit(executor, "H", "high")
    HOLDS[1], REACHED[1] = threading.Event(), threading.Event()
    low = _submit(executor, "L", low_token, seed=1, atoms=4, steps=2, hold=True)
    assert REACHED[1].wait(DEADLINE)  # L is inside its second atom
    high = _submit(executor, "H", high_token, seed=2, atoms=3, steps=2)
    _until(lambda: executor.gate.waiting("H"), "H waits at the gate")
    HOLDS[1].set()
    assert isinstance(high.result(), Done) and isinstance(low.result(), Done)
    # L: its start and one boundary; then all of H (start, 6 atom boundaries, 2 step
    # boundaries); then the rest of L (3 + 4 atom boundaries, 2 step boundaries).
    assert executor.grants == ["L"] * 2 + ["H"] * 9 + ["L"] * 9  # type: ignore[attr-defined]


def test_the_summary_says_how_long_the_job_waited_for_its_first_atom(executor: Executor) -> None:
    client = _submit(executor, "J", _admit(executor, "J"), atoms=1, steps=1)
    done = client.result()
    assert isinstance(done, Done) and done.summary["atoms"] == 1.0 and done.summary["executor_wait_ms"] >= 0.0


@pytest.mark.parametrize("case", ["unadmitted", "wrong token", "second connection", "revoked", "other kernel"])
def test_a_job_gpuosd_did_not_admit_as_presented_is_refused(executor: Executor, case: str) -> None:
    token = _admit(executor, "J")
    if case == "second connection":
        first = _submit(executor, "J", token, atoms=1, steps=1)
        assert isinstance(first.result(), Done)
    if case == "revoked":
        control.revoke(executor.control_path, "J")
    client = _Client(executor.socket_path)
    client.send(Submit(job_id="K" if case == "unadmitted" else "J",
                       token="x" * 43 if case == "wrong token" else token,
                       kernel="vattention-decode" if case == "other kernel" else FAKE.name, params={}, seed=0))
    reply = client.result()
    expected = {"unadmitted": "job 'K' is not admitted to this kernel executor",
                "wrong token": "job 'J': wrong token",
                "second connection": "job 'J' already has a connection",
                "revoked": "job 'J' is not admitted",
                "other kernel": "job 'J' was admitted for kernel 'fake-atoms', not 'vattention-decode'"}[case]
    assert isinstance(reply, Error) and expected in reply.message and reply.code == 1
    assert client.recv() is None  # and the connection is closed


def test_bad_parameters_are_refused_with_exit_code_2(executor: Executor) -> None:
    client = _submit(executor, "J", _admit(executor, "J"), atoms=0)
    reply = client.result()
    assert isinstance(reply, Error) and reply.code == 2 and reply.message.startswith("params.atoms: 0 is below")


def test_a_job_over_its_memory_limit_is_refused_naming_the_limit(executor: Executor) -> None:
    client = _submit(executor, "J", _admit(executor, "J", memory_limit=1000), memory=4096)
    reply = client.result()
    assert isinstance(reply, Failed) and reply.code == 1
    assert "needs 4.0 KiB (4096 bytes, by its cost model), over the job's memory limit of 1000 B (1000 bytes)" in reply.message


def test_revoking_a_running_job_cancels_it_at_its_next_atom(executor: Executor) -> None:
    HOLDS[1], REACHED[1] = threading.Event(), threading.Event()
    client = _submit(executor, "J", _admit(executor, "J"), seed=1, hold=True)
    assert REACHED[1].wait(DEADLINE)
    control.revoke(executor.control_path, "J")
    HOLDS[1].set()
    reply = client.result()
    assert isinstance(reply, Failed) and "cancelled at an atom boundary: revoked by gpuosd" in reply.message
    assert executor.running() == []


def test_a_client_that_disconnects_cancels_only_its_own_job(executor: Executor) -> None:
    HOLDS[1], REACHED[1] = threading.Event(), threading.Event()
    gone = _submit(executor, "gone", _admit(executor, "gone"), seed=1, hold=True)
    assert REACHED[1].wait(DEADLINE)
    other = _submit(executor, "other", _admit(executor, "other"), seed=2)
    gone.sock.close()
    _until(lambda: executor.gate.cancelled("gone"), "the executor sees the client gone")
    HOLDS[1].set()
    assert isinstance(other.result(), Done)
    cancelled = "job gone: failed: job gone cancelled at an atom boundary: the client closed its connection"
    _until(lambda: cancelled in executor.lines, "the disconnected job ends, cancelled")  # type: ignore[attr-defined]
    assert executor.running() == []


def test_pause_is_confirmed_once_the_job_has_left_the_gate_and_resume_finishes_it(executor: Executor) -> None:
    HOLDS[1], REACHED[1] = threading.Event(), threading.Event()
    client = _submit(executor, "J", _admit(executor, "J"), seed=1, hold=True)
    assert REACHED[1].wait(DEADLINE)
    client.send(Pause(seq=5))
    _until(lambda: executor.gate.paused("J"), "the executor takes the pause")
    HOLDS[1].set()
    assert isinstance(client.recv(), Accepted)
    assert client.recv() == Paused(seq=5)
    client.send(Pause(seq=6))  # a second SIGUSR1 before the client stopped: confirmed as well
    assert client.recv() == Paused(seq=6)
    atoms = executor.gate.atoms("J")
    assert executor.gate.waiting("J") and executor.gate.holder() is None
    client.send(Resume())
    assert isinstance(client.result(), Done) and executor.grants.count("J") > atoms  # type: ignore[attr-defined]


def test_malformed_messages_get_an_error_and_the_executor_keeps_serving(executor: Executor) -> None:
    rude = _Client(executor.socket_path)
    for line in (b"garbage\n", b'{"v": 1, "type": "submit", "job_id": 5}\n', b'{"v": 1, "type": "resume"}\n'):
        rude.sock.sendall(line)
        reply = rude.recv()
        assert isinstance(reply, Error), line
    rude.sock.sendall(b"x" * 70_000)  # no newline: cannot be framed, so the connection ends
    assert isinstance(rude.recv(), Error) and rude.recv() is None
    _Client(executor.socket_path).sock.close()  # an early close costs nothing either
    half = _Client(executor.socket_path)
    half.sock.sendall(b'{"v": 1, "type": "sub')
    half.sock.close()
    client = _submit(executor, "J", _admit(executor, "J"), atoms=1, steps=1)
    assert isinstance(client.result(), Done)
    assert control.ping(executor.control_path).running == 0


def test_the_control_socket_refuses_bad_admissions_and_other_uids(executor: Executor) -> None:
    with pytest.raises(control.ExecutorError, match="unknown kernel 'nope'"):
        _admit(executor, "J", kernel="nope")
    with pytest.raises(control.ExecutorError, match="priority: 'urgent' is not one of"):
        _admit(executor, "J", priority="urgent")
    assert control.ping(executor.control_path).admitted == 0
    if os.getuid() != 0:
        return
    os.chmod(executor.control_path, 0o666)  # past the file mode, to reach the uid check itself
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(executor.control_path)
                sock.sendall(encode(Ping()))
                os.write(write, sock.recv(4096))
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    reply = decode(os.read(read, 4096), CONTROL_REPLIES)
    assert isinstance(reply, Error) and reply.message == "uid 65534 may not control this kernel executor"


def test_a_second_executor_on_the_same_socket_refuses_to_start(executor: Executor) -> None:
    with pytest.raises(ExecutorStartError, match="another kernel executor serves"):
        Executor(executor.socket_path, lookup=_lookup, device=Device("cpu", False)).start()


# --- the executor and its client as processes, with the real kernel ---------------------------

TINY = {"batch": 1, "context": 64, "heads": 2, "kv_heads": 1, "dim": 16, "page_size": 16, "sink": 8, "local": 8,
        "base_sample": 8}


class _Served:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.path = str(base / "ex.sock")
        self.stderr = base / "executor.err"
        with open(self.stderr, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "gpuos.kernels.executor", "--socket", self.path],
                                         stdout=subprocess.PIPE, stderr=err, text=True)
        assert self.proc.stdout is not None
        assert "serving kernel jobs on" in self.proc.stdout.readline()

    def client(self, job_id: str, priority: str = "normal", steps: int = 3) -> subprocess.Popen[str]:
        token = control.new_token()
        control.admit(control.control_path(self.path), job_id=job_id, token=token, tenant="t", priority=priority,
                      memory_limit=0, kernel="vattention-decode")
        env = {**os.environ, "GPUOS_JOB_ID": job_id, control.TOKEN_ENV: token,
               "GPUOS_PROGRESS_FILE": str(self.base / f"{job_id}.json"),
               "GPUOS_LATENCY_FILE": str(self.base / f"{job_id}.latency")}
        argv = control.client_argv(self.path, "vattention-decode", [*((k, str(v)) for k, v in TINY.items()),
                                                                    ("steps", str(steps))], seed=1)
        return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def progress(self, job_id: str) -> int:
        read = read_progress(str(self.base / f"{job_id}.json"))
        return read.steps_done if read is not None else 0


@pytest.fixture(scope="module")
def served() -> Iterator[_Served]:
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="gpuos-x", dir="/tmp"))
    serving = _Served(base)
    yield serving
    serving.proc.kill()
    serving.proc.wait()
    shutil.rmtree(base, ignore_errors=True)


def _first_step(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("vattention-decode: {")  # accepted
    assert proc.stdout.readline().startswith("step 1/")


def test_two_clients_of_different_priorities_run_the_real_kernel_to_the_end(served: _Served) -> None:
    low, high = served.client("lo", "low"), served.client("hi", "high")
    for proc, job in ((low, "lo"), (high, "hi")):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.splitlines()[-1].startswith("vattention-decode: done, ") and served.progress(job) == 3
        assert "step 3/3: " in out


def test_a_killed_client_cancels_its_job_and_no_other(served: _Served) -> None:
    doomed = served.client("doomed", steps=1000)
    _first_step(doomed)
    survivor = served.client("survivor")
    doomed.kill()
    doomed.wait()
    out, err = survivor.communicate(timeout=60)
    assert survivor.returncode == 0 and served.progress("survivor") == 3, err
    _until(lambda: "job doomed: failed: job doomed cancelled at an atom boundary: the client closed its connection"
           in served.stderr.read_text(), "the executor cancels the killed client's job")


def test_sigusr1_pauses_the_job_and_stops_the_client_sigusr2_stops_it_at_a_step(served: _Served) -> None:
    proc = served.client("p", steps=1000)
    _first_step(proc)
    proc.send_signal(signal.SIGUSR1)
    _until(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_STOPPED, "the client stops itself")
    paused_at = served.progress("p")
    proc.send_signal(signal.SIGCONT)
    _until(lambda: served.progress("p") > paused_at + 1, "the resumed job makes progress")
    proc.send_signal(signal.SIGUSR2)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    done = served.progress("p")
    assert f"vattention-decode: stopped at step {done} of 1000 as asked" in out.splitlines()[-1]


def test_a_client_reports_an_unreachable_executor_and_bad_parameters(tmp_path: Path) -> None:
    env = {**os.environ, "GPUOS_JOB_ID": "j", control.TOKEN_ENV: "t" * 20}
    missing = str(tmp_path / "none.sock")
    run = subprocess.run(control.client_argv(missing, "vattention-decode", []), env=env, capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.strip() == f"gpuos-executor-client: cannot reach the kernel executor at {missing}: " \
        "No such file or directory"
    bad = subprocess.run(control.client_argv(missing, "vattention-decode", [("steps", "0")]), env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "params.steps: 0 is below the minimum 1" in bad.stderr


def test_sigterm_cancels_running_jobs_and_the_executor_exits(served: _Served) -> None:
    # Last of the subprocess tests: it ends the module's executor.
    proc = served.client("t", steps=1000)
    _first_step(proc)
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=60) == 0
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "cancelled at an atom boundary: the kernel executor is shutting down" in err
    assert not os.path.exists(served.path) and not os.path.exists(control.control_path(served.path))

