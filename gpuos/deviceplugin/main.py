"""``gpuos-device-plugin``: advertise gpuos partitions to the kubelet on this node."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from gpuos import cdi
from gpuos.client import Client
from gpuos.deviceplugin.plugin import Inventory, Manager, Options
from gpuos.deviceplugin.reconcile import POD_RESOURCES_SOCKET, Reconciler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpuos-device-plugin", description=__doc__.splitlines()[0])
    parser.add_argument("--socket", help="gpuosd's Unix socket (default as gpuosctl)")
    parser.add_argument("--plugin-dir", default="/var/lib/kubelet/device-plugins",
                        help="the kubelet's device-plugin directory (holds kubelet.sock)")
    parser.add_argument("--shared-replicas", type=int, default=4,
                        help="gpuos.io/gpu-shared devices per GPU (each an MPS share of 1/N)")
    parser.add_argument("--poll", type=float, default=0.5,
                        help="seconds between looks at gpuosd's devices (health updates come within one)")
    parser.add_argument("--pod-resources-socket", default=POD_RESOURCES_SOCKET,
                        help="the kubelet's PodResources API socket, to release the reservations of ended pods")
    parser.add_argument("--reconcile-interval", type=float, default=3.0,
                        help="seconds between reconciliations with the kubelet's PodResources (0: never)")
    parser.add_argument("--cdi-dir", default=cdi.DEFAULT_DIR,
                        help="where to write CDI spec files of allocated devices (empty: no CDI)")
    parser.add_argument("--dev-root", default="/dev",
                        help="where the host's /dev is seen, to find the GPUs' device nodes")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if not 1 <= args.shared_replicas <= 64:
        parser.error("--shared-replicas must be between 1 and 64")
    if not 0.05 <= args.poll <= 60:
        parser.error("--poll must be between 0.05 and 60 seconds")
    if args.reconcile_interval < 0:
        parser.error("--reconcile-interval must be 0 (never) or more seconds")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    client = Client(socket=args.socket)
    # A reservation is released once seen unclaimed by two Lists an interval apart (see reconcile).
    reconciler = Reconciler(client, args.pod_resources_socket, grace=args.reconcile_interval)
    manager = Manager(args.plugin_dir, Inventory(client, args.shared_replicas),
                      Options(poll=args.poll, cdi_dir=args.cdi_dir, dev_root=args.dev_root),
                      reconciler=reconciler if args.reconcile_interval > 0 else None,
                      reconcile_every=args.reconcile_interval)
    signal.signal(signal.SIGTERM, lambda *_: manager.stop())
    signal.signal(signal.SIGINT, lambda *_: manager.stop())
    manager.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
