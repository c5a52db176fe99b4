"""Fair use of gpuosd between tenants: what one tenant may hold open, and how fast its streams
send while others are calling.

gpuos caps each tenant's open streams here, its connections in the relay
(:mod:`gpuos.api.identity`) and its waiting jobs in the store. Caps bound what a tenant holds, not
how much of the daemon's time it takes: measured (bench/fairness.py), what slows everyone else is
a tenant's follow streams fanning out its own flood of events, each message a wake-up and a trip
through gRPC's one dispatch thread. So while other tenants are calling, one tenant's streams
together send at most ``contended_messages_per_second``; a tenant alone sends at full speed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from gpuos.errors import ResourceExhausted

# A tenant that started a call this recently counts as active (so others' streams are paced).
ACTIVE_SECONDS = 1.0
# The pacing lets this many seconds' worth of messages through at once.
BURST_SECONDS = 0.05


class StreamGate:
    """Counts open server streams (Watch, Logs) per tenant and in all.

    A follow stream is a coroutine on the server's loop (gpuos/api/loop.py) and holds no thread;
    what it holds is a task, its buffers and a share of a connection, so the caps bound memory:
    per tenant, so one tenant cannot take what every tenant shares, and in all.
    """

    def __init__(self, per_tenant: int, total: int, contended_messages_per_second: float = 0.0) -> None:
        self.per_tenant = per_tenant
        self.total = total
        self.rate = contended_messages_per_second  # 0: never paced
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}
        self._all = 0
        self._last_call: dict[str, float] = {}  # tenant -> when it last started a call
        self._tokens: dict[str, tuple[float, float]] = {}  # tenant -> (messages it may send, as of when)

    def note_call(self, tenant: str) -> None:
        """``tenant`` started a call (any call): it is active for the next second."""
        now = time.monotonic()
        with self._lock:
            self._last_call[tenant] = now
            if len(self._last_call) > 256:
                for other in [t for t, when in self._last_call.items() if now - when > ACTIVE_SECONDS]:
                    del self._last_call[other]

    def pace(self, tenant: str) -> None:
        """Before one message of ``tenant``'s streams: wait while it is over its contended rate."""
        delay = self.delay(tenant)
        if delay > 0:
            time.sleep(delay)

    async def apace(self, tenant: str) -> None:
        """:meth:`pace` for a stream that is a coroutine: it waits without holding the loop."""
        delay = self.delay(tenant)
        if delay > 0:
            await asyncio.sleep(delay)

    def delay(self, tenant: str) -> float:
        """Take one message of ``tenant``'s streams from its budget: the seconds it must wait first."""
        if not self.rate:
            return 0.0
        now = time.monotonic()
        with self._lock:
            contended = any(t != tenant and now - when < ACTIVE_SECONDS for t, when in self._last_call.items())
            burst = self.rate * BURST_SECONDS
            tokens, when = self._tokens.get(tenant, (burst, now))
            tokens = min(burst, tokens + (now - when) * self.rate)
            if contended:
                tokens -= 1
            self._tokens[tenant] = (tokens, now)
        return -tokens / self.rate if tokens < 0 else 0.0

    def enter(self, tenant: str) -> Callable[[], None]:
        """Count one more stream of ``tenant``; the returned function (idempotent) ends it."""
        with self._lock:
            held = self._open.get(tenant, 0)
            if held >= self.per_tenant:
                raise ResourceExhausted(
                    f"{tenant} has {held} streams (watch, logs, events -f) open, the most max_streams_per_tenant "
                    f"({self.per_tenant}) allows; close one first"
                )
            if self._all >= self.total:
                raise ResourceExhausted(
                    f"gpuosd has {self._all} streams open, the most it serves at once ({self.total}); "
                    "try again later"
                )
            self._open[tenant] = held + 1
            self._all += 1
        done = threading.Event()

        def release() -> None:
            with self._lock:
                if done.is_set():
                    return
                done.set()
                self._all -= 1
                left = self._open[tenant] - 1
                if left:
                    self._open[tenant] = left
                else:
                    del self._open[tenant]

        return release
