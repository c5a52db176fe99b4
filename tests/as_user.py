"""Run gpuosctl as another uid: ``python tests/as_user.py UID ARGS...``.

The interpreter here lives under /root, which other users cannot read, so modules are imported
as root first and privileges are dropped before the command runs.
"""

from __future__ import annotations

import os
import shutil  # noqa: F401 - argparse and others import these lazily
import sys
import textwrap  # noqa: F401
import uuid  # noqa: F401

import gpuos.cli.main
import gpuos.cli.output  # noqa: F401 - loaded before privileges are dropped
import gpuos.client  # noqa: F401
import gpuos.daemon.config  # noqa: F401
import gpuos.kernels.registry  # noqa: F401

if __name__ == "__main__":
    gpuos.cli.main.build_parser().format_help()
    uid = int(sys.argv[1])
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    sys.exit(gpuos.cli.main.main(sys.argv[2:]))
