"""gpuosd as an object: wires the store, device backend, runtime, controller and gRPC server.

The server and the metrics see the rest only through :class:`ControllerService`.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import threading
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import start_http_server

from gpuos.api.identity import Authenticator, PeerGateway, check_tcp_auth, load_tokens, user_name
from gpuos.api.server import build_server
from gpuos.daemon.config import DaemonConfig
from gpuos.daemon.controller import Controller
from gpuos.daemon.deploy import saved_choice
from gpuos.daemon.metrics import DaemonMetrics
from gpuos.daemon.retention import Purger, report_orphans
from gpuos.daemon.rundir import SOCKET_NAME, make_private_dir
from gpuos.daemon.service import ControllerService
from gpuos.devices.select import open_backend
from gpuos.errors import InvalidArgument
from gpuos.policy_choice import PolicyChoice
from gpuos.runtime.process import ProcessRuntime
from gpuos.scheduler import Policy
from gpuos.store import Store

log = logging.getLogger("gpuos.daemon")


class Daemon:
    """A running gpuosd. ``start()`` returns once it serves; ``stop()`` leaves jobs running."""

    # Set by start(), once the TCP credentials have been read.
    auth: Authenticator

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        state = config.state_path
        # The store makes the state dir (0700) and refuses a damaged one before anything starts.
        self.store = Store(state, max_pending_per_tenant=config.max_pending_per_tenant,
                           dedupe_retention=config.dedupe_retention_seconds)
        self.backend, self.backend_reason = open_backend(config.backend, config.sim_gpus)
        log.info("device backend: %s", self.backend_reason)
        self.runtime = ProcessRuntime(state / "jobs")
        report_orphans(self.store, self.runtime.jobs_dir)
        self.purger = Purger(self.store, self.runtime.job_dir, config.retention_seconds, config.retention_jobs)
        self.metrics = DaemonMetrics()
        policy, choice = self._initial_policy()
        self.controller = Controller(
            self.store, self.backend, self.runtime, policy, choice=choice,
            state_dir=state, kill_grace=config.kill_grace_seconds, metrics=self.metrics,
            health_failures_before_lost=config.health_failures_before_lost,
            memory_oversubscription=config.memory_oversubscription,
        )
        self.service = ControllerService(self.store, self.controller, self.backend, self.runtime,
                                         kill_grace_seconds=config.kill_grace_seconds, auth=lambda: self.auth)
        self.metrics.attach(self.service)
        self._metrics_server: WSGIServer | None = None
        self.metrics_port: int | None = None
        self._private_dir = str(make_private_dir(state))
        self.private_socket = os.path.join(self._private_dir, SOCKET_NAME)
        self.server, self.health = build_server(
            self.service, max_streams_per_tenant=config.max_streams_per_tenant,
            stream_messages_per_second=config.contended_stream_messages_per_second,
        )
        self.gateway: PeerGateway | None = None
        self.tcp_port: int | None = None
        self._stopped = threading.Event()

    def _initial_policy(self) -> tuple[Policy, PolicyChoice]:
        choice = saved_choice(self.store, self.config.policy)
        try:
            return choice.load(), choice
        except InvalidArgument:
            if self.config.policy:
                raise
            log.warning("the saved policy %r is no longer installed; using fifo", choice.name)
            fifo = PolicyChoice("fifo")
            return fifo.load(), fifo

    def start(self) -> None:
        config = self.config
        # Everything that can refuse the start is checked before anything starts.
        check_tcp_auth(config.listen, config.tcp_auth)
        tls = _read_tls(config) if config.listen and config.tcp_auth == "mtls" else None
        tokens = load_tokens(config.token_file) if config.listen and config.tcp_auth == "token" else None
        self.auth = Authenticator(admins=config.admins, tcp_auth=config.tcp_auth if config.listen else "",
                                  tcp_tenant=config.tcp_tenant, tokens=tokens,
                                  allow_other_users=config.allow_other_users)
        if os.getuid() != 0:
            me = user_name(os.getuid())
            if config.allow_other_users:
                log.warning("gpuosd runs as %s without root and allow_other_users = true: other users may "
                            "submit, and every job runs as %s", me, me)
            else:
                log.info("gpuosd runs as %s without root: it serves only %s (and root)", me, me)
        _raise_fd_limit()
        self.controller.start()
        self.purger.start()
        self.server.add_insecure_port(f"unix:{self.private_socket}")
        if config.listen:
            if tls is not None:
                self.tcp_port = self.server.add_secure_port(config.listen, tls)
            else:
                self.tcp_port = self.server.add_insecure_port(config.listen)
            if not self.tcp_port:
                raise InvalidArgument("listen", f"cannot listen on {config.listen}")
            if config.tcp_auth == "insecure":
                log.warning("listening on TCP %s without authentication (insecure_tcp = true): anyone who can "
                            "reach it acts as tenant %r", config.listen, config.tcp_tenant)
            else:
                log.info("listening on TCP %s (%s)", config.listen,
                         "mutual TLS" if config.tcp_auth == "mtls" else "bearer tokens")
        self.server.start()
        self.gateway = PeerGateway(config.socket, self.private_socket, config.effective_socket_mode,
                                   config.max_connections_per_uid)
        self.auth.gateway = self.gateway
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
        if self.gateway is not None:
            # Only now: calls in flight during the grace period were still relayed.
            self.gateway.close()
        self.controller.stop()
        self.purger.stop()
        self.store.close()
        self.backend.close()
        shutil.rmtree(self._private_dir, ignore_errors=True)

    def wait(self) -> None:
        self._stopped.wait()


def _read_tls(config: DaemonConfig) -> grpc.ServerCredentials:
    """Server credentials that require a client certificate signed by ``tls_ca``."""
    pem = {}
    for name in ("tls_cert", "tls_key", "tls_ca"):
        path = getattr(config, name)
        try:
            pem[name] = open(path, "rb").read()
        except OSError as exc:
            raise InvalidArgument(name, f"{path} cannot be read: {exc.strerror}") from None
        if b"-----BEGIN " not in pem[name]:
            raise InvalidArgument(name, f"{path} is not a PEM file")
    return grpc.ssl_server_credentials([(pem["tls_key"], pem["tls_cert"])], root_certificates=pem["tls_ca"],
                                       require_client_auth=True)


def _raise_fd_limit() -> None:
    """Use the whole hard limit on open files: every client connection costs the gateway two."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # keep the limit we have
