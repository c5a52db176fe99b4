"""Kernel tests run the Triton kernels on the CPU under Triton's interpreter.

TRITON_INTERPRET is set in the root conftest, before anything imports Triton.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")


@pytest.fixture
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
