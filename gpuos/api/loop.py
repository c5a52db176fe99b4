"""The gRPC server on its own asyncio loop, and the feed that wakes its followers.

Why asyncio: a follow stream (``Watch``, ``Logs -f``) on grpcio's threaded server holds a worker
thread for as long as it is open, so followers were capped well below the thread pool (32 per
tenant, 224 in all) and an agent fleet of 1,000 followers could not be served. On grpc.aio a
follow stream is a coroutine that costs a task and its buffers while it waits; the unary
handlers stay plain functions, run in a thread pool as before (grpc.aio's migration pool).

:class:`LoopServer` gives the daemon the calls it made of the threaded server (add ports,
start, stop(grace).wait()) while the aio server lives on a thread of its own.
:class:`EventFeed` is how the store's writer thread wakes the followers: one call into the loop
per commit, waking only the followers of the tenants whose events it holds.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterable
from concurrent import futures
from typing import Any, TypeVar

import grpc

from gpuos.jobs import Event

T = TypeVar("T")
# The tenant of a follower of every tenant's events (an admin's Watch).
ALL = ""
# What a follower waits on (see follow_key).
Key = tuple[str, ...]
EVERYONE: Key = ("all",)


class LoopServer:
    """A grpc.aio server running on a dedicated event-loop thread."""

    def __init__(self, make: Callable[[], grpc.aio.Server], name: str = "gpuos-rpc-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

        async def build() -> grpc.aio.Server:
            return make()  # grpc.aio binds a server to the loop it is made on

        self.server = self.run(build())

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        async def call() -> T:
            return fn(*args)

        return self.run(call())

    def add_insecure_port(self, address: str) -> int:
        return self._call(self.server.add_insecure_port, address)

    def add_secure_port(self, address: str, credentials: grpc.ServerCredentials) -> int:
        return self._call(self.server.add_secure_port, address, credentials)

    def start(self) -> None:
        self.run(self.server.start())

    def stop(self, grace: float | None) -> _Stopping:
        """Stop serving (calls in flight get ``grace`` seconds); ``.wait()`` until done."""
        return _Stopping(self, asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop))


class _Stopping:
    def __init__(self, owner: LoopServer, stopped: futures.Future[None]) -> None:
        self._owner = owner
        self._stopped = stopped

    def wait(self, timeout: float | None = None) -> bool:
        try:
            self._stopped.result(timeout)
        except futures.TimeoutError:
            return False
        loop = self._owner.loop
        loop.call_soon_threadsafe(loop.stop)
        self._owner._thread.join(timeout=5)
        return True


class EventFeed:
    """Wakes the loop's followers when the store commits events they follow.

    ``committed`` runs on the store's writer thread and costs one ``call_soon_threadsafe`` per
    commit; the waking runs on the loop and wakes only the followers of what the commit touched:
    a job's follower wakes for its job's events, a group's for its group's, a tenant's for its
    tenant's, an admin's for any. A thousand agents each following its own job then cost a
    commit a few wake-ups, not a thousand.

    A follower reads the events it has not seen, then waits here; both happen on the loop with
    no await in between, so a commit that lands after its read always wakes it (the timeout is
    a backstop, as a follower of the threaded server had).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._waiting: dict[Key, asyncio.Event] = {}
        self._closed = False

    def committed(self, events: Iterable[Event]) -> None:
        """The store committed ``events`` (called from its writer thread)."""
        if self._closed:
            return
        keys: set[Key] = {EVERYONE}
        for event in events:
            keys.add(("job", event.job_id))
            keys.add(("tenant", event.tenant))
            if event.group:
                keys.add(("group", event.tenant, event.group))
        try:
            self.loop.call_soon_threadsafe(self._wake, keys)
        except RuntimeError:
            self._closed = True  # the loop is closed: gpuosd is shutting down

    def _wake(self, keys: set[Key]) -> None:
        for key in keys:
            waiting = self._waiting.pop(key, None)
            if waiting is not None:
                waiting.set()

    async def wait(self, key: Key, timeout: float) -> None:
        """Until events under ``key`` are committed, or ``timeout`` passes."""
        waiting = self._waiting.get(key)
        if waiting is None:
            waiting = self._waiting[key] = asyncio.Event()
        try:
            await asyncio.wait_for(waiting.wait(), timeout)
        except asyncio.TimeoutError:
            pass


def follow_key(job_id: str, tenant: str, group: str) -> Key:
    """What a follower of one job, one tenant's group, one tenant (``ALL``: everyone) waits on."""
    if job_id:
        return ("job", job_id)
    if group:
        return ("group", tenant, group)
    return EVERYONE if tenant == ALL else ("tenant", tenant)
