"""systemd integration: readiness and watchdog notifications (``Type=notify``, ``WatchdogSec=``).

The protocol is one datagram per message to ``$NOTIFY_SOCKET`` (sd_notify(3)); it is small
enough that depending on libsystemd for it would cost more than it saves.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable


def notify(message: str) -> bool:
    """Send ``message`` (e.g. ``READY=1``) to systemd; False when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError:
            return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings systemd expects, if it asked for them for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 1e6


class Watchdog:
    """Pings systemd at half its interval while ``healthy()`` says the daemon still works.

    When the control loop stops making rounds, the pings stop and systemd restarts gpuosd.
    """

    def __init__(self, interval: float, healthy: Callable[[float], bool]) -> None:
        self.interval = interval
        self.healthy = healthy
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpuos-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval / 2):
            if self.healthy(time.time()):
                notify("WATCHDOG=1")
