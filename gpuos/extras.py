"""Optional dependencies: which extra brings them, and one clear refusal when one is missing.

``pip install gpuos`` gives the daemon and the CLI; kernels, the simulator's metrics and plots,
and LLM-driven policy search need extras (see pyproject.toml). A feature checks here before it
imports anything optional, so a missing package reads as "install gpuos[sim]", never as an
import traceback.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence

from gpuos.errors import FailedPrecondition


@functools.cache
def installed(module: str) -> bool:
    """Whether ``module`` can be imported here (found, not imported; checked once per process)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(modules: Sequence[str]) -> tuple[str, ...]:
    """Those of ``modules`` that cannot be imported here."""
    return tuple(m for m in modules if not installed(m))


def install_hint(extra: str) -> str:
    return f"pip install 'gpuos[{extra}]'"


class MissingExtra(FailedPrecondition):
    """A feature's optional dependencies are not installed; the message names the extra."""

    def __init__(self, feature: str, modules: Sequence[str], extra: str) -> None:
        self.modules = tuple(modules)
        self.extra = extra
        super().__init__(
            f"{feature} needs {' and '.join(modules)}, which {'is' if len(modules) == 1 else 'are'} "
            f"not installed; install {'it' if len(modules) == 1 else 'them'} with {install_hint(extra)}"
        )


def require(feature: str, extra: str, modules: Sequence[str]) -> None:
    """Raise :class:`MissingExtra` if any of ``modules`` is missing."""
    absent = missing(modules)
    if absent:
        raise MissingExtra(feature, absent, extra)
