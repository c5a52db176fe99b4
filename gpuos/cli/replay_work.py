"""The work of one replayed trace job: ``python -m gpuos.cli.replay_work SECONDS CHECKPOINT [fail]``.

It "works" for SECONDS of its own run time by sleeping in short steps. Time it was not allowed
to run does not count: gpuosd time-slices a GPU by stopping the jobs whose turn it is not
(SIGSTOP), so a step that took far longer than asked was mostly spent stopped, and counts as
the step asked for. On SIGTERM (gpuosd preempting or cancelling it) it writes the work done so
far to CHECKPOINT and exits 143 (gpuosd decides from why it stopped the job, not from this
code, whether the job goes back to the queue); started again with the same CHECKPOINT it
resumes from there. It exits 0 once the work is done, or FAILED (1) with ``fail``: a trace job
whose outcome is a failure (an agent's variant that did not work) runs all its work, then fails.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from gpuos.files import write_atomic

# Short enough that the work done ends within a few ms of the target, long enough that a replay
# of hundreds of jobs does not keep the CPU busy waking them.
STEP = 0.01
DONE_WITHIN = 1e-6
# The exit code of a process that SIGTERM ended, as the shell reports it.
TERMINATED = 128 + signal.SIGTERM
# The exit code of work that was done but failed (``fail``).
FAILED = 1
FAIL = "fail"


class Stopped(Exception):
    """SIGTERM arrived."""


def read_checkpoint(path: Path) -> float:
    """Seconds of work a checkpoint records (0 when there is none yet)."""
    try:
        return float(json.loads(path.read_text())["done"])
    except FileNotFoundError:
        return 0.0


def write_checkpoint(path: Path, done: float) -> None:
    # Replaced whole, so a job killed mid-write resumes from the previous checkpoint, not garbage;
    # not fsynced, as a replay does not outlive its machine.
    try:
        write_atomic(path, json.dumps({"done": done}), mode=0o644, durable=False)
    except OSError as exc:
        # A replay that was cancelled may have removed its directory already; nothing resumes then.
        print(f"cannot write checkpoint {path}: {exc.strerror}", file=sys.stderr)


def work(seconds: float, done: float = 0.0, step: float = STEP,
         clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
         progress: list[float] | None = None) -> float:
    """Sleep until ``seconds`` of run time are done, starting from ``done``; returns it.

    A step counts at most as long as it was asked to take. If :class:`Stopped` interrupts a
    step, the part of it run so far counts too, and ``progress[0]`` holds the total then.
    """
    progress = progress if progress is not None else [done]
    progress[0] = done
    # Done to within a microsecond: a smaller remainder can round away to nothing in the clock.
    while seconds - progress[0] > DONE_WITHIN:
        ask = min(step, seconds - progress[0])
        began = clock()
        try:
            sleep(ask)
        finally:
            progress[0] += min(clock() - began, ask)
    return progress[0]


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise Stopped


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3) or args[2:] not in ([], [FAIL]):
        print(f"usage: python -m gpuos.cli.replay_work SECONDS CHECKPOINT [{FAIL}]", file=sys.stderr)
        return 2
    seconds, checkpoint, fails = float(args[0]), Path(args[1]), args[2:] == [FAIL]
    # Until the handler is in place SIGTERM simply ends the process, leaving the checkpoint as it was.
    progress = [read_checkpoint(checkpoint)]
    signal.signal(signal.SIGTERM, _on_term)
    # Printed once SIGTERM is handled, so whoever waits for this line may stop the job safely.
    print(f"working from {progress[0]:.3f} s of {seconds:.3f} s", flush=True)
    try:
        work(seconds, progress[0], progress=progress)
    except Stopped:
        # A second SIGTERM must not cut the checkpoint short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        write_checkpoint(checkpoint, progress[0])
        print(f"stopped at {progress[0]:.3f} s of {seconds:.3f} s; checkpoint {checkpoint}", flush=True)
        return TERMINATED
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    write_checkpoint(checkpoint, progress[0])
    print(f"done: {progress[0]:.3f} s of work{', and failed as asked' if fails else ''}", flush=True)
    return FAILED if fails else 0


if __name__ == "__main__":
    sys.exit(main())
