"""The driver's two kubelet sockets: plugin registration and the DRAPlugin service.

The kubelet watches its plugin registry directory (``/var/lib/kubelet/plugins_registry``); a
socket appearing there is asked ``Registration.GetInfo``, which names the driver, the endpoint of
its DRAPlugin service (a socket in ``/var/lib/kubelet/plugins/gpuos.io/``) and the service
versions it serves. The kubelet picks the newest it knows (``v1.DRAPlugin``, else
``v1beta1.DRAPlugin`` for kubelets before 1.34), then reports with
``NotifyRegistrationStatus``. Both services are served on the one endpoint.

If either socket file disappears (a kubelet clean-up, a node reboot with a persistent plugin
pod), :meth:`KubeletPlugin.sync` serves it again, which makes the kubelet register anew.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from concurrent import futures

import grpc

from gpuos.dra.driver import DraService, Driver
from gpuos.dra.inventory import DRIVER
from gpuos.dra.pluginregistration.v1 import api_pb2 as reg_pb2
from gpuos.dra.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from gpuos.dra.v1 import api_pb2 as v1_pb2
from gpuos.dra.v1 import api_pb2_grpc as v1_grpc
from gpuos.dra.v1beta1 import api_pb2 as v1beta1_pb2
from gpuos.dra.v1beta1 import api_pb2_grpc as v1beta1_grpc

log = logging.getLogger("gpuos.dra")

PLUGIN_TYPE = "DRAPlugin"
# The kubelet's names for the services (k8s.io/kubelet/pkg/apis/dra/<version> DRAPluginService).
SUPPORTED_VERSIONS = ("v1.DRAPlugin", "v1beta1.DRAPlugin")


class Registration(reg_grpc.RegistrationServicer):
    """What the kubelet's plugin watcher asks: who this is, and where its service listens."""

    def __init__(self, endpoint: str, driver_name: str = DRIVER) -> None:
        self.endpoint = endpoint
        self.driver_name = driver_name
        self.registered = threading.Event()
        self.last_error = ""

    def GetInfo(self, request: reg_pb2.InfoRequest, context: grpc.ServicerContext) -> reg_pb2.PluginInfo:
        return reg_pb2.PluginInfo(type=PLUGIN_TYPE, name=self.driver_name, endpoint=self.endpoint,
                                  supported_versions=list(SUPPORTED_VERSIONS))

    def NotifyRegistrationStatus(
        self, request: reg_pb2.RegistrationStatus, context: grpc.ServicerContext
    ) -> reg_pb2.RegistrationStatusResponse:
        if request.plugin_registered:
            log.info("the kubelet registered %s", self.driver_name)
            self.last_error = ""
            self.registered.set()
        else:
            log.error("the kubelet refused to register %s: %s", self.driver_name, request.error)
            self.last_error = request.error
            self.registered.clear()
        return reg_pb2.RegistrationStatusResponse()


def _serve(path: str, add: list, name: str) -> grpc.Server:  # type: ignore[type-arg]
    if os.path.exists(path):
        os.unlink(path)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix=name))
    for register in add:
        register(server)
    server.add_insecure_port(f"unix:{path}")
    server.start()
    return server


class KubeletPlugin:
    """Serves the registration socket and the DRAPlugin endpoint for ``driver``."""

    def __init__(self, driver: Driver, registry_dir: str, plugin_dir: str, driver_name: str = DRIVER) -> None:
        self.driver = driver
        self.registration_path = os.path.join(registry_dir, f"{driver_name}-reg.sock")
        self.endpoint = os.path.join(plugin_dir, "dra.sock")
        self.registration = Registration(self.endpoint, driver_name)
        self.registry_dir = registry_dir
        self.plugin_dir = plugin_dir
        self._dra: grpc.Server | None = None
        self._reg: grpc.Server | None = None

    def _start_dra(self) -> None:
        v1 = DraService(self.driver, v1_pb2)
        v1beta1 = DraService(self.driver, v1beta1_pb2)
        os.makedirs(self.plugin_dir, exist_ok=True)
        self._dra = _serve(self.endpoint, [
            lambda s: v1_grpc.add_DRAPluginServicer_to_server(v1, s),  # type: ignore[arg-type]
            lambda s: v1beta1_grpc.add_DRAPluginServicer_to_server(v1beta1, s),  # type: ignore[arg-type]
        ], "gpuos-dra")

    def _start_registration(self) -> None:
        os.makedirs(self.registry_dir, exist_ok=True)
        self.registration.registered.clear()
        self._reg = _serve(self.registration_path, [
            lambda s: reg_grpc.add_RegistrationServicer_to_server(self.registration, s),
        ], "gpuos-dra-reg")

    def start(self) -> None:
        # The service first: once the registration socket appears the kubelet may call it at once.
        self._start_dra()
        self._start_registration()
        log.info("serving %s on %s, registration on %s", ", ".join(SUPPORTED_VERSIONS), self.endpoint,
                 self.registration_path)

    def sync(self) -> bool:
        """Serve again a socket whose file is gone; True if it did."""
        again = False
        if self._dra is None or not os.path.exists(self.endpoint):
            if self._dra is not None:
                self._dra.stop(0)
            self._start_dra()
            again = True
        if self._reg is None or not os.path.exists(self.registration_path) or again:
            if self._reg is not None:
                self._reg.stop(0)
            self._start_registration()
            again = True
        if again:
            log.info("serving the kubelet sockets again")
        return again

    def stop(self) -> None:
        for server, path in ((self._reg, self.registration_path), (self._dra, self.endpoint)):
            if server is not None:
                server.stop(0)
            # The kubelet (or a test standing in for it) may remove the socket at any moment.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._reg = self._dra = None
