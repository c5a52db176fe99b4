"""``gpuos-device-plugin``: advertise gpuos partitions to the kubelet on this node."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from gpuos.client import Client
from gpuos.deviceplugin.plugin import Inventory, Manager


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpuos-device-plugin", description=__doc__.splitlines()[0])
    parser.add_argument("--socket", help="gpuosd's Unix socket (default as gpuosctl)")
    parser.add_argument("--plugin-dir", default="/var/lib/kubelet/device-plugins",
                        help="the kubelet's device-plugin directory (holds kubelet.sock)")
    parser.add_argument("--shared-replicas", type=int, default=4,
                        help="gpuos.io/gpu-shared devices per GPU (each an MPS share of 1/N)")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between health and kubelet checks")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if not 1 <= args.shared_replicas <= 64:
        parser.error("--shared-replicas must be between 1 and 64")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    manager = Manager(args.plugin_dir, Inventory(Client(socket=args.socket), args.shared_replicas), args.poll)
    signal.signal(signal.SIGTERM, lambda *_: manager.stop())
    signal.signal(signal.SIGINT, lambda *_: manager.stop())
    manager.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
