"""OpenEvolve as a gpuos search engine: an LLM edits the policy's evolve block, gpuos scores it.

:func:`run` prepares a run directory and starts OpenEvolve (PyPI ``openevolve``, an optional
dependency: ``pip install gpuos[adrs]``) in a process of its own, never inside gpuosd: its
controller installs signal handlers and a process pool. The run directory holds

- ``config.yaml``: OpenEvolve's settings, from ``templates/openevolve_config.yaml``;
- ``adrs.json``: objective, training traces and feature dimensions, which the evaluator shim
  (``templates/evaluator.py``) reads through ``GPUOS_ADRS_CONFIG``;
- ``initial_policy.py``: the starting program (``templates/initial_policy.py``);
- ``openevolve/``: OpenEvolve's output: ``checkpoints/checkpoint_<N>/``, ``best/best_program.py``
  and ``best/best_program_info.json`` (its metrics), ``logs/``;
- ``engine.log``: the child process's output.

The model is any OpenAI-compatible endpoint (a local vLLM or Ollama works). ``client_factory``
("module:function") replaces it: OpenEvolve calls ``function(model_config)`` for each model and
uses the returned object's async ``generate`` / ``generate_with_context``; tests use it to
drive the whole loop with a scripted model and no network.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gpuos.agents.evaluator import CONFIG_ENV

TEMPLATES = Path(__file__).resolve().parent / "templates"
CONFIG_TEMPLATE = TEMPLATES / "openevolve_config.yaml"
INITIAL_PROGRAM = TEMPLATES / "initial_policy.py"
EVALUATOR_SHIM = TEMPLATES / "evaluator.py"
API_KEY_ENV = "GPUOS_LLM_API_KEY"
_CHECKPOINT = re.compile(r"checkpoint_(\d+)$")
# OpenEvolve's log line for each finished iteration (openevolve/process_parallel.py).
# "Iteration 3 error: ..." in openevolve 0.4.0, "Iteration 3 error [diff]: ..." in 0.4.1.
_ITERATION_DONE = re.compile(r"Iteration (\d+)(?:: Program | error(?: \[[^\]]*\])?: (.*)| timed out )")
POLL_SECONDS = 0.5


class EngineError(RuntimeError):
    """The OpenEvolve run could not start, failed, or got no answer from the model; the message says
    which and what to do."""


def output_dir(run_dir: Path) -> Path:
    """Where OpenEvolve writes checkpoints, logs and the best program of a run."""
    return Path(run_dir) / "openevolve"


def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    """(iteration, directory) of the newest checkpoint in ``run_dir``, or None."""
    found = []
    root = output_dir(run_dir) / "checkpoints"
    for path in root.glob("checkpoint_*") if root.is_dir() else ():
        match = _CHECKPOINT.search(path.name)
        if match and (path / "metadata.json").is_file():
            found.append((int(match.group(1)), path))
    return max(found) if found else None


def best_program(run_dir: Path) -> Path:
    """The best program saved in ``run_dir``: at the end of the run, else at the latest checkpoint."""
    final = output_dir(run_dir) / "best" / "best_program.py"
    if final.is_file():
        return final
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint and (checkpoint[1] / "best_program.py").is_file():
        return checkpoint[1] / "best_program.py"
    raise EngineError(f"{run_dir} holds no best program yet; run the search first")


def feature_dimensions(configured: Sequence[str], objective: str) -> list[str]:
    """The configured MAP-Elites dimensions, with the run objective's own guard ratio (which the
    evaluator does not report) replaced by another objective's."""
    from gpuos.agents.objectives import OBJECTIVES

    own = f"guard/{objective}"
    spare = [
        f"guard/{name}" for name, o in OBJECTIVES.items()
        if o.guard and f"guard/{name}" not in configured and name != objective
    ]
    return [spare.pop(0) if name == own and spare else name for name in configured]


def write_config(
    run_dir: Path,
    *,
    objective: str,
    traces: Sequence[str] | None,
    iterations: int,
    api_base: str | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """Write ``config.yaml`` and ``adrs.json`` for a run from the template; return the config."""
    import yaml  # a dependency of openevolve, so of the adrs extra only

    config = yaml.safe_load(CONFIG_TEMPLATE.read_text())
    config["max_iterations"] = iterations
    config["checkpoint_interval"] = max(1, min(int(config["checkpoint_interval"]), iterations))
    llm = config["llm"]
    if api_base:
        llm["api_base"] = api_base
    if model:
        llm["models"] = [{"name": model, "weight": 1.0}]
    if os.environ.get(API_KEY_ENV):
        llm["api_key"] = "${" + API_KEY_ENV + "}"
    config["evaluator"]["parallel_evaluations"] = os.cpu_count() or 1
    config["database"]["feature_dimensions"] = feature_dimensions(
        config["database"]["feature_dimensions"], objective
    )
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    # Read by gpuos.agents.evaluator (objective, traces) and the evaluator shim (features).
    settings: dict[str, Any] = {
        "objective": objective,
        "feature_dimensions": config["database"]["feature_dimensions"],
    }
    if traces:
        settings["traces"] = list(traces)
    (run_dir / "adrs.json").write_text(json.dumps(settings, indent=2) + "\n")
    return config


def run(
    *,
    objective: str,
    traces: Sequence[str] | None,
    iterations: int,
    run_dir: str | Path,
    api_base: str | None = None,
    model: str | None = None,
    resume: bool = False,
    client_factory: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Search for ``iterations`` iterations in total and return the best program's path.

    ``traces`` are the training traces (None: the evaluator's default training set). With
    ``resume`` the search continues from the latest checkpoint in ``run_dir`` and runs only the
    iterations still missing; the objective, traces and model of the earlier run stay in force
    (edit ``config.yaml`` / ``adrs.json`` to change them). Without ``resume`` a run directory
    that already holds checkpoints is refused rather than mixed with a new run. ``progress``
    is called with (iterations finished, iterations) about twice a second while OpenEvolve runs.

    Raises :class:`EngineError` if openevolve is not installed, fails, or never got an answer
    from the model, and ``FileExistsError`` for a used run directory without ``resume``.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, not {iterations}")
    if importlib.util.find_spec("openevolve") is None:
        raise EngineError("the openevolve engine needs the adrs extra: pip install 'gpuos[adrs]'")
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint and not resume:
        raise FileExistsError(
            f"{run_dir} already holds a search (checkpoint {checkpoint[0]}); "
            "resume it or choose another run directory"
        )
    if checkpoint and (run_dir / "config.yaml").is_file():
        done = checkpoint[0]
        if done >= iterations:
            return best_program(run_dir)
    else:
        done = 0
        write_config(
            run_dir, objective=objective, traces=traces, iterations=iterations, api_base=api_base, model=model
        )
        shutil.copyfile(INITIAL_PROGRAM, run_dir / "initial_policy.py")
    command = [
        sys.executable,
        "-m",
        __name__,
        "--run-dir",
        str(run_dir),
        "--iterations",
        str(iterations - done),
    ]
    if checkpoint:
        command += ["--checkpoint", str(checkpoint[1])]
    if client_factory:
        command += ["--client-factory", client_factory]
    env = dict(os.environ, **{CONFIG_ENV: str(run_dir / "adrs.json")})
    log = run_dir / "engine.log"
    start = log.stat().st_size if log.exists() else 0
    with log.open("ab") as out:
        child = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            while True:
                try:
                    status = child.wait(timeout=POLL_SECONDS)
                except subprocess.TimeoutExpired:
                    status = None
                if progress is not None:
                    progress(done + len(completed_iterations(log, start)), iterations)
                if status is not None:
                    break
        except BaseException:
            child.terminate()  # OpenEvolve shuts down gracefully on SIGTERM
            child.wait()
            raise
    # Checked before the exit status: OpenEvolve 0.4.0 exits 0 when no iteration produced a
    # candidate, 0.4.1 raises EvolutionFailedError and exits 1.
    errors = completed_iterations(log, start).values()
    if errors and all(e.startswith("LLM generation failed") for e in errors):
        raise EngineError(
            f"the model never answered ({next(iter(errors))}); check the endpoint and model "
            "(api_base, model) and start again in a new run directory"
        )
    if status != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise EngineError(f"OpenEvolve exited with status {status}; see {log}:\n{tail}")
    return best_program(run_dir)


def completed_iterations(log: Path, start: int = 0) -> dict[int, str]:
    """Iterations OpenEvolve reported finished in ``log`` from byte ``start`` on, each with its
    error ("" when it produced a candidate)."""
    with log.open("rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    return {int(m.group(1)): m.group(2) or "" for m in _ITERATION_DONE.finditer(text)}


def load_factory(spec: str) -> Callable[[Any], Any]:
    """The callable named by "module:function"."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"client factory must be 'module:function', not {spec!r}")
    factory = getattr(importlib.import_module(module), name)
    if not callable(factory):
        raise ValueError(f"{spec} is not callable")
    return factory


def _forward_worker_settings() -> None:
    """Make OpenEvolve's worker processes honour ``enforce_evolve_blocks`` and ``diff_pattern``.

    openevolve 0.4.0 leaves both out of the config it sends to its workers, which then apply
    edits made outside the evolve blocks; pass them on (a no-op once a release sends them).
    """
    from openevolve.process_parallel import ProcessParallelController

    serialize = ProcessParallelController._serialize_config
    if getattr(serialize, "forwards_worker_settings", False):
        return

    def serialize_all(self: Any, config: Any) -> dict[str, Any]:
        data = serialize(self, config)
        data.setdefault("enforce_evolve_blocks", config.enforce_evolve_blocks)
        data.setdefault("diff_pattern", config.diff_pattern)
        return data

    serialize_all.forwards_worker_settings = True  # type: ignore[attr-defined]
    ProcessParallelController._serialize_config = serialize_all  # type: ignore[method-assign]


def _evolve(run_dir: Path, iterations: int, checkpoint: str | None, client_factory: str | None) -> int:
    """Run OpenEvolve in this process (the child that :func:`run` starts)."""
    from openevolve import OpenEvolve
    from openevolve.config import load_config

    config = load_config(str(run_dir / "config.yaml"))
    if client_factory:
        factory = load_factory(client_factory)
        for model_config in config.llm.models + config.llm.evaluator_models:
            model_config.init_client = factory
    _forward_worker_settings()
    controller = OpenEvolve(
        initial_program_path=str(run_dir / "initial_policy.py"),
        evaluation_file=str(EVALUATOR_SHIM),
        config=config,
        output_dir=str(output_dir(run_dir)),
    )
    best = asyncio.run(controller.run(iterations=iterations, checkpoint_path=checkpoint))
    # OpenEvolve checkpoints only at multiples of checkpoint_interval; keep the final state too
    # so that a resumed search neither repeats nor loses iterations.
    last = controller.database.last_iteration
    saved = latest_checkpoint(run_dir)
    if last > 0 and (saved is None or saved[0] < last):
        controller._save_checkpoint(last)
    return 0 if best is not None else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run OpenEvolve on a prepared gpuos run directory.")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--iterations", type=int, required=True, help="iterations to run now")
    parser.add_argument("--checkpoint", help="checkpoint directory to resume from")
    parser.add_argument("--client-factory", help="module:function returning a model client")
    args = parser.parse_args(argv)
    return _evolve(args.run_dir.resolve(), args.iterations, args.checkpoint, args.client_factory)


if __name__ == "__main__":
    sys.exit(main())
