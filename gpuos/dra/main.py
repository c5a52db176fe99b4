"""``gpuos-dra-plugin``: the Kubernetes DRA driver for gpuos partitions on this node."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Collection
from typing import Any

from gpuos import cdi, extras
from gpuos.client import ApiError, Client
from gpuos.dra.inventory import ALL_KINDS, Inventory, Kind, inventory

log = logging.getLogger("gpuos.dra")


class Plugin:
    """The driver's parts wired together: the kubelet sockets, the claims, the published slices.

    ``run`` serves until :meth:`stop`: it re-serves vanished sockets and republishes the node's
    ResourceSlices every ``poll`` seconds, and at once after a claim is prepared or unprepared.
    """

    def __init__(self, client: Client, resource_api: Any, node: str, state_dir: str, cdi_dir: str,
                 registry_dir: str, plugin_dir: str, kinds: Collection[Kind] = ALL_KINDS, poll: float = 5.0,
                 dev_root: str = "/dev", mig_minors: str = cdi.MIG_MINORS) -> None:
        from gpuos.dra.checkpoint import Checkpoint
        from gpuos.dra.driver import ApiClaims, Driver
        from gpuos.dra.kubelet import KubeletPlugin
        from gpuos.dra.slices import Publisher

        self.client = client
        self.kinds = frozenset(kinds)
        self.poll = poll
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.driver = Driver(client, ApiClaims(resource_api), Checkpoint(state_dir), cdi_dir, node,
                             on_change=self._wake.set, dev_root=dev_root, mig_minors=mig_minors)
        self.kubelet = KubeletPlugin(self.driver, registry_dir, plugin_dir)
        self.publisher = Publisher(resource_api, node, self.inventory)

    def inventory(self) -> Inventory:
        gpus = list(self.client.devices().devices)
        held, jobs = self.driver.held(gpus)
        return inventory(gpus, held, jobs, self.kinds)

    def start(self) -> None:
        try:
            self.driver.reconcile()
        except ApiError as exc:
            log.warning("cannot list gpuosd's reservations (%s); orphans stay until released", exc.details)
        self.kubelet.start()

    def step(self) -> None:
        self.kubelet.sync()
        try:
            self.publisher.sync()
        except ApiError as exc:
            log.warning("cannot reach gpuosd (%s); the slices stay as they are", exc.details)
        except Exception as exc:  # the API server: unreachable, or refusing the slices
            log.warning("cannot publish ResourceSlices: %s", exc)

    def run(self) -> None:
        self.start()
        try:
            while not self._stop.is_set():
                self.step()
                self._wake.wait(self.poll)
                self._wake.clear()
        finally:
            self.kubelet.stop()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()


def _kinds(text: str) -> frozenset[Kind]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = {k.value: k for k in Kind}
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{','.join(bad) or text!r}: offer a comma-separated list of "
                                         f"{', '.join(known)}")
    return frozenset(known[n] for n in names)


def resource_api(kubeconfig: str | None, server: str | None) -> Any:
    """A ResourceV1Api: in-cluster credentials in a pod, else ``kubeconfig``; ``server`` (an
    API server URL without credentials, for tests and ``kubectl proxy``) overrides both."""
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    if server:
        configuration = k8s.Configuration(host=server)
    elif kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        k8s_config.load_incluster_config()
        configuration = k8s.Configuration.get_default_copy()
    else:
        configuration = k8s.Configuration()
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return k8s.ResourceV1Api(k8s.ApiClient(configuration))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpuos-dra-plugin", description=__doc__.splitlines()[0])
    parser.add_argument("--socket", help="gpuosd's Unix socket (default as gpuosctl)")
    parser.add_argument("--node-name", default=os.environ.get("NODE_NAME") or socket.gethostname(),
                        help="this node's name, the pool of its ResourceSlices (default $NODE_NAME)")
    parser.add_argument("--state-dir", default="/var/lib/gpuos-dra", help="where the checkpoint of prepared claims lives")
    parser.add_argument("--cdi-dir", default="/var/run/cdi", help="where the container runtime reads CDI specs")
    parser.add_argument("--registry-dir", default="/var/lib/kubelet/plugins_registry",
                        help="the kubelet's plugin registration directory")
    parser.add_argument("--plugin-dir", default="/var/lib/kubelet/plugins/gpuos.io",
                        help="where the DRAPlugin socket is served (the same path on the host)")
    parser.add_argument("--offer", type=_kinds, default=ALL_KINDS,
                        help="which kinds of device to offer: gpu,mig,mps,timeslice (default all)")
    parser.add_argument("--dev-root", default="/dev",
                        help="where the host's /dev is seen (to tell which device nodes exist; /host/dev in a pod)")
    parser.add_argument("--kubeconfig", help="a kubeconfig file (default: in-cluster credentials)")
    parser.add_argument("--api-server", help="an API server URL to use without credentials (kubectl proxy)")
    parser.add_argument("--poll", type=float, default=5.0, help="seconds between republishing checks")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.poll <= 0:
        parser.error("--poll must be more than 0 seconds")
    if not args.node_name:
        parser.error("--node-name is empty; set it or $NODE_NAME")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        extras.require("gpuos-dra-plugin", "kubernetes", ["kubernetes"])
    except extras.MissingExtra as exc:
        print(f"gpuos-dra-plugin: {exc}", file=sys.stderr)
        return 2
    plugin = Plugin(Client(socket=args.socket), resource_api(args.kubeconfig, args.api_server), args.node_name,
                    args.state_dir, args.cdi_dir, args.registry_dir, args.plugin_dir, args.offer, args.poll,
                    args.dev_root)
    signal.signal(signal.SIGTERM, lambda *_: plugin.stop())
    signal.signal(signal.SIGINT, lambda *_: plugin.stop())
    plugin.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
