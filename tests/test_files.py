"""Files replaced whole (gpuos.files.write_atomic): what a reader of the path can see."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gpuos.files import write_atomic


@pytest.mark.parametrize("durable", [True, False])
def test_the_file_is_replaced_whole_with_its_mode_and_no_temporary_left(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "state.json"
    path.write_text("old")
    old_umask = os.umask(0o077)
    try:
        write_atomic(path, '{"new": 1}', mode=0o644, durable=durable)
    finally:
        os.umask(old_umask)
    assert path.read_text() == '{"new": 1}'
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # the umask does not narrow it
    assert os.listdir(tmp_path) == ["state.json"]


def test_files_are_private_unless_asked_and_bytes_are_written_as_given(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    write_atomic(path, b"\x00\xff")
    assert path.read_bytes() == b"\x00\xff" and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_write_that_cannot_replace_the_path_leaves_it_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_text("kept")
    with pytest.raises(OSError):
        write_atomic(target, "new")
    assert (target / "inside").read_text() == "kept" and os.listdir(tmp_path) == ["taken"]
