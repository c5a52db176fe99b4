"""gpuosd as an object: wires the store, device backend, runtime, controller and gRPC server."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

from gpuos.api.identity import Identity, PeerGateway
from gpuos.api.server import build_server, identify
from gpuos.daemon.config import DaemonConfig
from gpuos.daemon.controller import Controller
from gpuos.daemon.metrics import DaemonMetrics
from gpuos.devices.select import open_backend
from gpuos.errors import InvalidArgument
from gpuos.runtime.process import ProcessRuntime
from gpuos.scheduler import Policy, get_policy
from gpuos.store import Store

log = logging.getLogger("gpuos.daemon")

POLICY_KEY = "policy"


class Daemon:
    """A running gpuosd. ``start()`` returns once it serves; ``stop()`` leaves jobs running."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        state = config.state_path
        state.mkdir(parents=True, exist_ok=True)
        self.store = Store(state)
        self.backend, self.backend_reason = open_backend(config.backend, config.sim_gpus)
        log.info("device backend: %s", self.backend_reason)
        self.runtime = ProcessRuntime(state / "jobs")
        self.metrics = DaemonMetrics()
        self.controller = Controller(
            self.store, self.backend, self.runtime, self._initial_policy(),
            state_dir=state, kill_grace=config.kill_grace_seconds, metrics=self.metrics,
        )
        self.metrics.attach(self)
        self._metrics_server: WSGIServer | None = None
        self.metrics_port: int | None = None
        self._private_dir = tempfile.mkdtemp(prefix="gpuos-")  # mode 0700
        self.private_socket = os.path.join(self._private_dir, "grpc.sock")
        self.server, self.health = build_server(self)
        self.gateway: PeerGateway | None = None
        self.tcp_port: int | None = None
        self._stopped = threading.Event()

    def _initial_policy(self) -> Policy:
        name = self.config.policy or self.store.meta(POLICY_KEY) or "fifo"
        try:
            return get_policy(name)
        except InvalidArgument:
            if self.config.policy:
                raise
            log.warning("the saved policy %r is no longer installed; using fifo", name)
            return get_policy("fifo")

    def identify(self, peer: str) -> Identity:
        return identify(peer, self.gateway, self.config.admins, self.config.tcp_tenant)

    def set_policy(self, policy: Policy) -> None:
        self.store.set_meta(POLICY_KEY, policy.name)
        self.controller.set_policy(policy)
        log.info("policy is now %s", policy.name)

    def start(self) -> None:
        self.controller.start()
        self.server.add_insecure_port(f"unix:{self.private_socket}")
        if self.config.listen:
            self.tcp_port = self.server.add_insecure_port(self.config.listen)
            if not self.tcp_port:
                raise InvalidArgument("listen", f"cannot listen on {self.config.listen}")
            log.warning("listening on TCP %s: callers there act as tenant %r without authentication",
                        self.config.listen, self.config.tcp_tenant)
        self.server.start()
        self.gateway = PeerGateway(self.config.socket, self.private_socket, self.config.socket_mode)
        self.gateway.start()
        if self.config.metrics_listen:
            host, port = self.config.metrics_listen.rsplit(":", 1)
            self._metrics_server, _ = start_http_server(int(port), addr=host.strip("[]"), registry=self.metrics.registry)
            self.metrics_port = self._metrics_server.server_port
        log.info("gpuosd serving on %s (policy %s, %d GPUs)", self.config.socket, self.controller.policy.name,
                 len(self.controller.devices))

    def stop(self, grace: float = 2.0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        if self.gateway is not None:
            self.gateway.stop()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        self.server.stop(grace).wait()
        self.controller.stop()
        self.store.close()
        self.backend.close()
        shutil.rmtree(self._private_dir, ignore_errors=True)

    def wait(self) -> None:
        self._stopped.wait()
