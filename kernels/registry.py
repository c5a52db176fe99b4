"""Built-in kernel jobs by name, each with a declared parameter schema and a cost model.

This module must stay importable without torch or Triton: the daemon validates kernel jobs
with it, and the kernels themselves run only in the kernel worker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gpuos import extras
from gpuos.errors import InvalidArgument
from gpuos.text import quote


@dataclass(frozen=True)
class Param:
    """One declared parameter. ``kind`` is ``int``, ``float``, ``bool`` or ``choice``."""

    name: str
    kind: str
    default: Any
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    def parse(self, raw: str) -> Any:
        field_name = f"params.{self.name}"
        if self.kind == "choice":
            if raw not in self.choices:
                raise InvalidArgument(field_name, f"{quote(raw)} is not one of {', '.join(self.choices)}")
            return raw
        if self.kind == "bool":
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise InvalidArgument(field_name, f"{quote(raw)} is not a boolean (true/false)")
        try:
            value: float = int(raw) if self.kind == "int" else float(raw)
        except ValueError:
            raise InvalidArgument(field_name, f"{quote(raw)} is not a{'n integer' if self.kind == 'int' else ' number'}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidArgument(field_name, f"{quote(raw)} is not a finite number")
        shown = raw if len(raw) <= 40 else quote(raw)  # a number as written, unless it is absurdly long
        if self.minimum is not None and value < self.minimum:
            raise InvalidArgument(field_name, f"{shown} is below the minimum {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise InvalidArgument(field_name, f"{shown} is above the maximum {self.maximum:g}")
        return value


@dataclass(frozen=True)
class KernelCost:
    """What one step of a kernel job costs, for placement and for colocation models."""

    flops_per_step: float
    bytes_per_step: float
    memory_bytes: int


@dataclass(frozen=True)
class KernelSpec:
    """A schedulable kernel: its schema, its cost model, and where its runner lives.

    ``runner`` is ``"module:function"``, imported only inside the kernel worker
    (:mod:`gpuos.kernels.worker`); the function takes the validated parameters and a
    :class:`~gpuos.kernels.context.KernelContext`, calls ``ctx.report(step, latency_s)`` after
    each step, and returns a summary of floats.
    """

    name: str
    description: str
    params: tuple[Param, ...]
    cost: Callable[[Mapping[str, Any]], KernelCost]
    runner: str
    extra: Mapping[str, str] = field(default_factory=dict)

    def validate(self, raw: Mapping[str, str]) -> dict[str, Any]:
        """Parse and range-check ``raw``; unknown names are refused, missing ones take defaults."""
        declared = {p.name: p for p in self.params}
        unknown = sorted(set(raw) - set(declared))
        if unknown:
            raise InvalidArgument(
                f"params.{unknown[0]}",
                f"kernel {self.name!r} has no parameter {quote(unknown[0])}; it takes {', '.join(sorted(declared))}",
            )
        values = {name: p.default for name, p in declared.items()}
        for name, text in raw.items():
            values[name] = declared[name].parse(text)
        return values


_KERNELS: dict[str, KernelSpec] = {}

# What every built-in kernel imports when it runs (the worker runs on gpuosd's Python), and the
# extra that installs them. Checked once per process: a later install needs a restart of gpuosd.
RUNTIME_MODULES = ("torch", "triton")
RUNTIME_EXTRA = "kernels"


def missing_runtime() -> tuple[str, ...]:
    """The modules kernel jobs need that this Python cannot import; empty when they can run here."""
    return extras.missing(RUNTIME_MODULES)


def require_runtime() -> None:
    """Raise FailedPrecondition (MissingExtra), naming ``gpuos[kernels]``, if kernels cannot run here."""
    extras.require("a kernel job", RUNTIME_EXTRA, RUNTIME_MODULES)


def register(spec: KernelSpec) -> KernelSpec:
    _KERNELS[spec.name] = spec
    return spec


def _load() -> None:
    # Each kernel family declares its spec in a torch-free module named ``<family>_spec``.
    # The package is found by its spec, not imported by name: gpuos.kernels exports the public
    # kernel functions, which import their specs, which import this module.
    import importlib
    import importlib.util
    import pkgutil

    found = importlib.util.find_spec(__package__ or "gpuos.kernels")
    for module in pkgutil.iter_modules(found.submodule_search_locations if found else []):
        if module.name.endswith("_spec"):
            importlib.import_module(f"{__package__}.{module.name}")


def available() -> dict[str, KernelSpec]:
    _load()
    return dict(sorted(_KERNELS.items()))


def get_kernel(name: str) -> KernelSpec:
    _load()
    spec = _KERNELS.get(name)
    if spec is None:
        known = ", ".join(sorted(_KERNELS)) or "none installed"
        raise InvalidArgument("kernel", f"unknown kernel {quote(name)}; built-in kernels: {known}")
    return spec
