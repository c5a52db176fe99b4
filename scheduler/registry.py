"""Policies by name: the built-in ones plus any a package adds under the ``gpuos.policies`` entry point."""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from gpuos.errors import InvalidArgument
from gpuos.scheduler.policy import Policy
from gpuos.text import quote

_REGISTRY: dict[str, type[Policy]] = {}
_loaded = False


def register(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make a policy available under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"policy name {cls.name!r} is already taken by {_REGISTRY[cls.name].__module__}")
    _REGISTRY[cls.name] = cls
    return cls


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from gpuos.scheduler import policies

    for module in pkgutil.iter_modules(policies.__path__):
        importlib.import_module(f"{policies.__name__}.{module.name}")
    for ep in entry_points(group="gpuos.policies"):
        cls = ep.load()
        if isinstance(cls, type) and issubclass(cls, Policy):
            _REGISTRY.setdefault(ep.name, cls)


def available() -> dict[str, type[Policy]]:
    """Every known policy, by name."""
    _load()
    return dict(sorted(_REGISTRY.items()))


def get_policy(name: str) -> Policy:
    """A fresh instance of the policy called ``name``."""
    _load()
    cls = _REGISTRY.get(name)
    if cls is None:
        known = ", ".join(sorted(_REGISTRY))
        raise InvalidArgument("policy", f"unknown policy {quote(name)}; known policies: {known}")
    return cls()
