"""What a caller sends is bounded and printable where it is shown, and comes back short in errors.

Issue 10, items 1 (error messages quote at most a couple of hundred characters), 4 (caps on
command, args, env and names; argv+env within ARG_MAX) and 8 (control characters refused at
submit, escaped on output).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from gpuos.api import convert
from gpuos.api.server import MAX_STATUS_MESSAGE, _handled
from gpuos.client import Client
from gpuos.daemon.daemon import Daemon
from gpuos.errors import InvalidArgument
from gpuos.jobs import JobKind, JobSpec, Resources
from gpuos.v1 import jobs_pb2
from tests.test_bad_input import refused

PY = sys.executable
BIG = 20 * 1024
# What a refusal of 20 KB of input may cost: the field, the problem, a short quote.
SHORT = 400


# -- 1. error messages quote little of what was sent -----------------------------------------------


@pytest.mark.parametrize("job_id", ["a" * BIG, "z" * BIG], ids=["hex", "not-hex"])
def test_a_20kb_job_id_comes_back_as_a_short_message_naming_the_id(client: Client, job_id: str) -> None:
    err = refused(lambda: client.get(job_id))
    assert err.code.name in ("NOT_FOUND", "INVALID_ARGUMENT")
    assert len(err.details) < SHORT and "id" in err.details and f"{BIG} characters" in err.details


def test_a_20kb_name_comes_back_as_a_short_message_naming_the_name(client: Client) -> None:
    err = refused(lambda: client.submit([PY], name="n" * BIG))
    assert err.code.name == "INVALID_ARGUMENT" and len(err.details) < SHORT and err.details.startswith("name:")


def test_a_20kb_param_value_comes_back_as_a_short_message_naming_the_param(client: Client) -> None:
    err = refused(lambda: client.submit(kernel="radial-dit", params={"steps": "9" * BIG}))
    assert err.code.name == "INVALID_ARGUMENT" and len(err.details) < SHORT
    assert err.details.startswith("params.steps:")


def test_a_long_garbage_param_value_is_quoted_cut_short(client: Client) -> None:
    err = refused(lambda: client.submit(kernel="radial-dit", params={"dtype": "x" * 1000}))
    assert err.code.name == "INVALID_ARGUMENT" and len(err.details) < SHORT
    assert err.details.startswith("params.dtype:") and "1000 characters" in err.details


def test_a_20kb_mig_profile_comes_back_as_a_short_message_naming_the_field(client: Client) -> None:
    err = refused(lambda: client.submit([PY], mig_profile="1g.10gb" * (BIG // 7)))
    assert err.code.name == "INVALID_ARGUMENT" and len(err.details) < SHORT
    assert err.details.startswith("resources.mig_profile:")


@pytest.mark.parametrize("field, value", [
    ("kernel", {"kernel": "k" * BIG}),
    ("tenant", {"tenant": "t" * BIG}),
    ("resources.sharing", {"sharing": "s" * BIG}),
    ("qos", {"qos": "q" * BIG}),
    ("cwd", {"cwd": "c" * 3000}),
    ("env", {"env": {"K" * BIG: "v"}}),
])
def test_every_echoed_field_comes_back_short(client: Client, field: str, value: dict[str, Any]) -> None:
    command = [] if "kernel" in value else [PY]
    err = refused(lambda: client.submit(command, **value))
    assert len(err.details) < SHORT and field in err.details


def test_a_20kb_policy_name_comes_back_short(client: Client) -> None:
    err = refused(lambda: client.set_policy("p" * BIG))
    # The message also lists the installed policies, which tests may add to: only the quote is bounded.
    assert err.code.name == "INVALID_ARGUMENT" and "policy" in err.details
    assert "p" * 201 not in err.details and len(err.details) < 1024


class _Context:
    """Just what _handled uses of a grpc.ServicerContext: abort records and raises."""

    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise RuntimeError("aborted")


def test_any_status_message_is_capped_at_1_kib() -> None:
    class Servicer:
        @_handled
        def Get(self, request: object, context: object) -> None:
            raise InvalidArgument("field", "x" * 100_000)

    context = _Context()
    with pytest.raises(RuntimeError, match="aborted"):
        Servicer().Get(None, context)
    assert context.aborted is not None
    code, details = context.aborted
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(details.encode()) <= MAX_STATUS_MESSAGE and details.startswith("field: xxx")


# -- 4. bounded specs --------------------------------------------------------------------------------


def test_a_7mb_environment_is_refused_naming_env_and_the_limit(client: Client) -> None:
    env = {f"V{i}": "x" * 100_000 for i in range(70)}
    err = refused(lambda: client.submit([PY], env=env))
    assert err.code.name == "INVALID_ARGUMENT" and err.details.startswith("env:")
    assert str(convert.arg_max() - convert.EXEC_HEADROOM) in err.details and len(err.details) < SHORT


def test_an_environment_beyond_arg_max_is_refused(client: Client) -> None:
    limit = convert.arg_max() - convert.EXEC_HEADROOM
    env = {f"V{i}": "x" * 100_000 for i in range(limit // 100_000 + 1)}
    err = refused(lambda: client.submit([PY], env=env))
    assert err.code.name == "INVALID_ARGUMENT" and err.details.startswith("env:")


def test_arguments_beyond_arg_max_are_refused_naming_the_command(client: Client) -> None:
    limit = convert.arg_max() - convert.EXEC_HEADROOM
    command = [PY, *["a" * 100_000] * (limit // 100_000 + 1)]
    err = refused(lambda: client.submit(command, env={}))
    assert err.code.name == "INVALID_ARGUMENT" and err.details.startswith("command:")


def test_an_environment_just_under_the_limit_is_accepted_and_the_job_runs(client: Client) -> None:
    # The headroom is enough for what gpuosd adds: exec does not fail with E2BIG.
    limit = convert.arg_max() - convert.EXEC_HEADROOM
    command = [PY, "-c", "import os; print(len(os.environ['V0']))"]
    used = sum(len(a) + 1 + 8 for a in command)
    env = {}
    i = 0
    while used + 100_000 + 16 < limit:
        env[f"V{i}"] = "x" * 99_990
        used += len(f"V{i}=") + 99_990 + 1 + 8
        i += 1
    job = client.submit(command, env=env)
    done = client.wait(job.id, timeout=60)
    assert jobs_pb2.JobState.Name(done.state) == "SUCCEEDED", done.message


def test_one_env_value_longer_than_exec_allows_is_refused_naming_it(client: Client) -> None:
    err = refused(lambda: client.submit([PY], env={"BIGVAR": "x" * (128 * 1024)}))
    assert err.code.name == "INVALID_ARGUMENT" and err.details.startswith("env.BIGVAR:")


def test_one_argument_longer_than_exec_allows_is_refused_naming_it(client: Client) -> None:
    err = refused(lambda: client.submit([PY, "x" * (128 * 1024)], env={}))
    assert err.code.name == "INVALID_ARGUMENT" and err.details.startswith("command[1]:")


def test_too_many_params_are_refused(client: Client) -> None:
    params = {f"p{i}": "1" for i in range(convert.MAX_PARAMS + 1)}
    err = refused(lambda: client.submit(kernel="radial-dit", params=params))
    assert err.code.name == "INVALID_ARGUMENT" and err.details.startswith("params:")
    assert str(convert.MAX_PARAMS) in err.details


def test_too_many_gpu_types_are_refused(client: Client) -> None:
    err = refused(lambda: client.submit([PY], gpu_types=[f"T{i}" for i in range(convert.MAX_GPU_TYPES + 1)]))
    assert err.code.name == "INVALID_ARGUMENT" and err.details.startswith("resources.gpu_types:")


# -- 8. control characters refused where they would be shown ----------------------------------------

CONTROLS = {"esc": "\x1b[2J", "newline": "a\nb", "del": "a\x7f", "c1": "a\x9b31m", "bidi": "a\u202eb",
            "line-separator": "a\u2028b"}


@pytest.mark.parametrize("text", CONTROLS.values(), ids=CONTROLS.keys())
@pytest.mark.parametrize("field, submit", [
    ("name", lambda c, t: c.submit([PY], name=t)),
    ("tenant", lambda c, t: c.submit([PY], tenant=t)),
    ("params.dtype", lambda c, t: c.submit(kernel="radial-dit", params={"dtype": t})),
    ("resources.gpu_types", lambda c, t: c.submit([PY], gpu_types=[t])),
    ("kernel", lambda c, t: c.submit(kernel=t)),
])
def test_control_characters_are_refused_naming_the_field(client: Client, field: str, submit, text: str) -> None:  # type: ignore[no-untyped-def]
    err = refused(lambda: submit(client, text))
    assert err.code.name == "INVALID_ARGUMENT" and err.details.startswith(f"{field}:")
    assert "\x1b" not in err.details and "\n" not in err.details


def test_command_arguments_may_hold_newlines(client: Client) -> None:
    job = client.submit([PY, "-c", "import sys\nsys.exit(3)"])
    assert client.wait(job.id, timeout=60).exit_code == 3


def test_a_name_derived_from_a_program_path_is_printable(client: Client, tmp_path: Path) -> None:
    program = tmp_path / "run\x1b[2Jme"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    job = client.submit([str(program)])
    assert job.name.isprintable() and "\\x1b" in job.name


# -- 8. anything shown in a table is escaped ---------------------------------------------------------

EVIL = "evil\x1b]0;owned\x07\x1b[2J\nforged line\u202e"


def _ctl(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "gpuos.cli.main", "--socket", daemon.config.socket, *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def old_job(daemon: Daemon) -> str:
    """A job written before names were checked: it reaches the store without the API's checks."""
    spec = JobSpec(name=EVIL, kind=JobKind.PROCESS, command=(PY, "-c", "pass\n"), tenant=EVIL,
                   resources=Resources(gpu_types=("no-such-gpu",)))  # never placed: it stays pending
    job, _ = daemon.store.submit(spec, 0)
    daemon.store.update(job.id, message=EVIL, event="note", event_message=EVIL)
    return job.id


def _assert_no_raw_controls(text: str) -> None:
    assert not any(not c.isprintable() and c != "\n" for c in text), repr(text)


def test_list_escapes_names_from_an_older_store(daemon: Daemon, old_job: str) -> None:
    out = _ctl(daemon, "list")
    assert out.returncode == 0, out.stderr
    _assert_no_raw_controls(out.stdout)
    assert len(out.stdout.splitlines()) == 2 and "\\x1b" in out.stdout  # the header and the job, one line


def test_get_escapes_the_name_and_the_message(daemon: Daemon, old_job: str) -> None:
    out = _ctl(daemon, "get", old_job)
    assert out.returncode == 0, out.stderr
    _assert_no_raw_controls(out.stdout)
    assert "forged line" in out.stdout and not any(line.startswith("forged") for line in out.stdout.splitlines())


def test_events_escape_messages(daemon: Daemon, old_job: str) -> None:
    out = _ctl(daemon, "events", "--job", old_job)
    assert out.returncode == 0, out.stderr
    _assert_no_raw_controls(out.stdout)
    assert "\\x1b" in out.stdout and not any(line.startswith("forged") for line in out.stdout.splitlines())


def test_json_output_escapes_control_characters_too(daemon: Daemon, old_job: str) -> None:
    out = _ctl(daemon, "-o", "json", "get", old_job)
    assert out.returncode == 0, out.stderr
    _assert_no_raw_controls(out.stdout)
