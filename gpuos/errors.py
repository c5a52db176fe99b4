"""Errors a user can act on. The API layer maps each class to one gRPC status code."""

from __future__ import annotations


class GpuosError(Exception):
    """Base class: every error gpuos raises on purpose derives from it."""


class InvalidArgument(GpuosError):
    """A request field is malformed; ``field`` names it so the caller knows what to fix."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class NotFound(GpuosError):
    pass


class PermissionDenied(GpuosError):
    pass


class Unauthenticated(GpuosError):
    """A TCP caller sent no valid credentials (bearer token or client certificate)."""


class ResourceExhausted(GpuosError):
    """The request is well formed but no device could ever satisfy it."""


class FailedPrecondition(GpuosError):
    """The request is valid but not in the object's current state (e.g. cancelling a finished job)."""


class StoreError(GpuosError):
    """The job store cannot be opened or written as it is: damaged, read-only, not a database.

    The message reads ``store <path>: <what>``, so gpuosd can print it as its one line.
    """

    def __init__(self, path: object, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"store {path}: {problem}")


class BackendError(GpuosError):
    """The device backend could not do what was asked (driver error, missing tool)."""
