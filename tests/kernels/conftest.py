"""Kernel tests run the Triton kernels on the CPU under Triton's interpreter.

TRITON_INTERPRET is set in the root conftest, before anything imports Triton.
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")


@pytest.fixture
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _has_mask(key: Any) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, torch.Tensor) and k.dtype == torch.bool for k in keys)


@pytest.fixture
def host_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on, every read of a tensor's value on the host and every op whose output's size
    depends on values (``nonzero``, boolean-mask indexing): on a GPU, each waits for the device."""
    seen: list[str] = []
    for name in ("tolist", "item", "__int__", "__float__", "__bool__", "__index__", "nonzero"):
        def counted(self: torch.Tensor, *args: Any, _name: str = name, _read: Any = getattr(torch.Tensor, name),
                    **kwargs: Any) -> Any:
            seen.append(_name)
            return _read(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    nonzero = torch.nonzero

    def counted_nonzero(*args: Any, **kwargs: Any) -> Any:
        seen.append("nonzero")
        return nonzero(*args, **kwargs)

    monkeypatch.setattr(torch, "nonzero", counted_nonzero)
    get, put = torch.Tensor.__getitem__, torch.Tensor.__setitem__

    def masked_get(self: torch.Tensor, key: Any) -> Any:
        if _has_mask(key):
            seen.append("mask index")
        return get(self, key)

    def masked_put(self: torch.Tensor, key: Any, value: Any) -> None:
        if _has_mask(key):
            seen.append("mask index")
        put(self, key, value)

    monkeypatch.setattr(torch.Tensor, "__getitem__", masked_get)
    monkeypatch.setattr(torch.Tensor, "__setitem__", masked_put)
    return seen
