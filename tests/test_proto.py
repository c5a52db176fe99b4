"""The committed generated code is what tools/gen_proto.py makes from proto/ now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "tools" / "gen_proto.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    packages = ("gpuos/v1", "gpuos/deviceplugin/v1beta1", "gpuos/deviceplugin/podresources", "gpuos/dra/v1",
                "gpuos/dra/v1beta1", "gpuos/dra/pluginregistration/v1")
    fresh = {f"{d}/{p.name}": p.read_text() for d in packages for p in (tmp_path / d).iterdir() if p.is_file()}
    committed = {f"{d}/{p.name}": p.read_text() for d in packages for p in (ROOT / d).iterdir() if p.is_file()}
    stale = sorted(name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name))
    assert not stale, f"regenerate with `python tools/gen_proto.py`: {stale} differ from proto/"
