"""Policies are found by name, including ones a user's package adds through an entry point."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gpuos.errors import InvalidArgument
from gpuos.scheduler import Policy, available, get_policy, registry

USER_POLICY = '''
from gpuos.scheduler import Policy

class NewestFirst(Policy):
    name = "user-newest-first"
    description = "a user's own policy: newest job first"

    def order(self, pending, snap):
        return sorted(pending, key=lambda j: -j.submitted_at)
'''


def test_a_policy_from_a_users_package_entry_point_is_found_by_name(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "userpolicies.py").write_text(USER_POLICY)
    dist = tmp_path / "userpolicies-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: userpolicies\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[gpuos.policies]\nuser-newest-first = userpolicies:NewestFirst\n")
    available()  # the built-in policies register once, on first use; keep them out of the patch
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    try:
        policy = get_policy("user-newest-first")
        assert isinstance(policy, Policy) and type(policy).__module__ == "userpolicies"
        assert "user-newest-first" in available() and "fifo" in available()
    finally:
        sys.modules.pop("userpolicies", None)


def test_an_unknown_policy_name_lists_the_known_ones() -> None:
    with pytest.raises(InvalidArgument, match="unknown policy 'nope'.*fifo"):
        get_policy("nope")
