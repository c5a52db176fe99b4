"""The CUDA driver's process checkpoint API: how a GPU process's memory moves to host memory and back.

Used by the NVML backend for suspend-to-host. Through cuda-python (the optional ``cuda`` extra),
imported only when asked for: ``cuda.core.checkpoint.Process`` where the installed cuda-core has
it, else the driver bindings' ``cuCheckpointProcess*`` functions (``cuda.bindings.driver``, or
``cuda.cuda`` in cuda-python before 12.6).

What the driver needs (CUDA driver API, "CUDA Checkpointing"; NVIDIA's cuda-checkpoint README):

- a display driver of r570 or later (the driver API interfaces; r555/r550 had only the
  ``cuda-checkpoint`` utility), and CUDA 13 drivers (r580 or later) to restore onto another GPU
  through the GPU-pair mapping of ``CUcheckpointRestoreArgs``. A mapping must name every GPU
  the process had checkpointed, and cuda-core's documentation asks for every GPU the kernel
  driver sees, so :func:`gpu_pairs` maps each GPU: the two swapped, the others onto themselves.
  The GPU restored onto must be of the same chip and have the memory free.
- ``cuInit`` in the caller, or persistence mode, for a restore: :func:`load` calls ``cuInit``.

Order of operations, and why (checked against NVIDIA's CRIU plugin, which drives the same API):

1. ``lock(pid, timeout)``: the process must be RUNNING (in CUDA's sense); lock blocks its further
   CUDA calls and waits for the work already submitted. CRIU locks *before* it freezes the
   process tree. A process stopped with SIGSTOP is continued first.
2. ``checkpoint(pid)``: the GPU memory is copied to host memory (inside the process) and the
   GPU's handles are released: the memory is free on the GPU. The copy is done by a driver
   thread in the target process (the "restore thread", cuCheckpointProcessGetRestoreThreadId):
   CRIU resumes exactly that thread (ptrace) around the checkpoint. gpuosd does not ptrace, so
   the whole process must be running (its CUDA calls are held by the lock meanwhile); it may be
   stopped again once the checkpoint returned.
3. ``restore(pid, pairs)`` then ``unlock(pid)``: the memory comes back (onto the mapped GPUs) and
   CUDA calls go on. The restore thread must run for this too, so a stopped process is
   continued before the restore. CRIU keeps the rest of the process frozen during the restore
   ("attempting to access a UVM pointer will crash if we haven't restored the underlying
   mappings yet"); gpuosd cannot, so a job whose CPU code touches managed (UVM) memory while
   it is being restored may crash. That is not verified on hardware.

Not verified without a GPU: whether the driver applies ptrace's permission rules to the caller
(:func:`may_act_on_others` assumes it does); the timings.
"""

from __future__ import annotations

import ctypes
import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gpuos.devices.backend import SuspendSupport
from gpuos.errors import BackendError

MIN_DRIVER_MAJOR = 570  # the driver API's checkpoint interfaces
GPU_PAIRS_DRIVER_MAJOR = 580  # CUDA 13: restore onto another GPU (CUcheckpointRestoreArgs.gpuPairs)
# CUDA versions those drivers report (cuDriverGetVersion: 1000 * major + 10 * minor).
_CUDA_OF_570, _CUDA_OF_580 = 12080, 13000
LOCK_TIMEOUT_MS = 10_000  # a process whose kernels run longer than this is left running

RUNNING, LOCKED, CHECKPOINTED, FAILED = "running", "locked", "checkpointed", "failed"
_STATE_NAMES = (
    ("CU_PROCESS_STATE_RUNNING", RUNNING),
    ("CU_PROCESS_STATE_LOCKED", LOCKED),
    ("CU_PROCESS_STATE_CHECKPOINTED", CHECKPOINTED),
    ("CU_PROCESS_STATE_FAILED", FAILED),
)
_BINDING_FUNCTIONS = (
    "cuCheckpointProcessLock",
    "cuCheckpointProcessCheckpoint",
    "cuCheckpointProcessRestore",
    "cuCheckpointProcessUnlock",
    "cuCheckpointProcessGetState",
)


class Driver:
    """One way of calling the checkpoint API. Each call raises BackendError with the driver's message."""

    mechanism = "abstract"
    cross_gpu = False  # whether restore() takes a GPU-pair mapping

    def state(self, pid: int) -> str:
        raise NotImplementedError

    def lock(self, pid: int, timeout_ms: int) -> None:
        raise NotImplementedError

    def checkpoint(self, pid: int) -> None:
        raise NotImplementedError

    def restore(self, pid: int, pairs: Mapping[str, str] | None) -> None:
        raise NotImplementedError

    def unlock(self, pid: int) -> None:
        raise NotImplementedError


class BindingsDriver(Driver):
    """The driver bindings (``cuda.bindings.driver`` or ``cuda.cuda``): functions returning
    ``(CUresult, value...)`` tuples."""

    def __init__(self, module: Any, name: str) -> None:
        self._m = module
        self.mechanism = f"CUDA checkpoint API ({name})"
        self.cross_gpu = hasattr(module, "CUcheckpointGpuPair")
        self._keep: list[Any] = []  # UUID buffers the driver reads during a restore

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        result = fn(*args)
        err = result[0] if isinstance(result, tuple) else result
        if int(err) != 0:
            raise BackendError(f"{what} failed: {self._error_text(err)}")
        return result[1] if isinstance(result, tuple) and len(result) > 1 else None

    def _error_text(self, err: Any) -> str:
        name = getattr(err, "name", str(err))
        try:
            got = self._m.cuGetErrorString(err)
            text = got[1] if isinstance(got, tuple) else got
            text = text.decode() if isinstance(text, bytes) else str(text)
        except Exception:  # noqa: BLE001 - the name is still worth reporting
            return str(name)
        return f"{name}: {text}"

    def init(self) -> None:
        self._call("cuInit", self._m.cuInit, 0)

    def driver_cuda_version(self) -> int:
        return int(self._call("cuDriverGetVersion", self._m.cuDriverGetVersion))

    def state(self, pid: int) -> str:
        value = self._call("cuCheckpointProcessGetState", self._m.cuCheckpointProcessGetState, pid)
        for attr, name in _STATE_NAMES:
            if value == getattr(self._m.CUprocessState, attr, object()):
                return name
        return f"unknown ({value})"

    def lock(self, pid: int, timeout_ms: int) -> None:
        args = self._m.CUcheckpointLockArgs()
        args.timeoutMs = timeout_ms
        self._call("cuCheckpointProcessLock", self._m.cuCheckpointProcessLock, pid, args)

    def checkpoint(self, pid: int) -> None:
        self._call("cuCheckpointProcessCheckpoint", self._m.cuCheckpointProcessCheckpoint, pid, None)

    def restore(self, pid: int, pairs: Mapping[str, str] | None) -> None:
        args = None
        if pairs:
            if not self.cross_gpu:
                raise BackendError("these CUDA bindings cannot restore onto another GPU (no CUcheckpointGpuPair)")
            args = self._m.CUcheckpointRestoreArgs()
            made = []
            for old, new in pairs.items():
                pair = self._m.CUcheckpointGpuPair()
                pair.oldUuid, pair.newUuid = self._uuid(old), self._uuid(new)
                made.append(pair)
            args.gpuPairs = made
            args.gpuPairsCount = len(made)
        self._call("cuCheckpointProcessRestore", self._m.cuCheckpointProcessRestore, pid, args)

    def unlock(self, pid: int) -> None:
        self._call("cuCheckpointProcessUnlock", self._m.cuCheckpointProcessUnlock, pid, None)

    def _uuid(self, text: str) -> Any:
        raw = uuid_bytes(text)
        uuid = self._m.CUuuid()
        try:
            uuid.bytes = raw
        except (AttributeError, TypeError, ValueError):
            # Bindings whose CUuuid is read-only wrap memory we own instead (as cuda.core does).
            buffer = ctypes.create_string_buffer(raw, 16)
            self._keep.append(buffer)
            uuid = self._m.CUuuid(ctypes.addressof(buffer))
        return uuid


class CoreDriver(Driver):
    """``cuda.core.checkpoint.Process`` (cuda-core 1.0 and later)."""

    def __init__(self, checkpoint_module: Any) -> None:
        self._m = checkpoint_module
        self.mechanism = "CUDA checkpoint API (cuda.core.checkpoint)"
        self.cross_gpu = True  # Process.restore takes gpu_mapping; the driver may still refuse it

    def _do(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - cuda.core raises RuntimeError or CUDAError
            raise BackendError(f"{what} failed: {exc}") from exc

    def state(self, pid: int) -> str:
        return str(self._do("checkpoint state", lambda: self._m.Process(pid).state))

    def lock(self, pid: int, timeout_ms: int) -> None:
        self._do("lock", lambda: self._m.Process(pid).lock(timeout_ms))

    def checkpoint(self, pid: int) -> None:
        self._do("checkpoint", lambda: self._m.Process(pid).checkpoint())

    def restore(self, pid: int, pairs: Mapping[str, str] | None) -> None:
        mapping = {_bare(k): _bare(v) for k, v in pairs.items()} if pairs else None
        self._do("restore", lambda: self._m.Process(pid).restore(mapping))

    def unlock(self, pid: int) -> None:
        self._do("unlock", lambda: self._m.Process(pid).unlock())


def _bare(uuid: str) -> str:
    """NVML spells a GPU UUID ``GPU-xxxxxxxx-...``; the checkpoint API takes the hex part."""
    return uuid[4:] if uuid.upper().startswith("GPU-") else uuid


def uuid_bytes(text: str) -> bytes:
    """The 16 bytes of a GPU UUID (``GPU-`` prefix and dashes allowed)."""
    try:
        raw = bytes.fromhex(_bare(text).replace("-", ""))
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise BackendError(f"{text!r} is not a GPU UUID")
    return raw


def load(importer: Callable[[str], Any] = importlib.import_module) -> Driver:
    """The checkpoint API as the installed cuda-python offers it (cuda.core first), with the
    driver initialised. Raises BackendError saying what is missing."""
    bindings = None
    for name in ("cuda.bindings.driver", "cuda.cuda"):
        try:
            bindings = importer(name), name
            break
        except ImportError:
            continue
    if bindings is None:
        raise BackendError("cuda-python is not installed (pip install 'gpuos[cuda]')")
    driver = BindingsDriver(*bindings)
    missing = [f for f in _BINDING_FUNCTIONS if not hasattr(bindings[0], f)]
    if missing:
        raise BackendError(f"the installed cuda-python lacks the checkpoint API ({', '.join(missing)}); "
                           "it needs cuda-python 12.8 or later")
    driver.init()
    try:
        return CoreDriver(importer("cuda.core.checkpoint"))
    except ImportError:
        return driver


def driver_major(nvml_version: str | None, cuda_version: int | None) -> int:
    """The display driver's major version (570 for 570.86.15), from NVML's string, else
    bounded from the CUDA version it reports (12.8 came with r570, 13.0 with r580); 0 unknown."""
    if nvml_version:
        head = nvml_version.strip().split(".")[0]
        if head.isdigit():
            return int(head)
    if cuda_version:
        if cuda_version >= _CUDA_OF_580:
            return GPU_PAIRS_DRIVER_MAJOR
        if cuda_version >= _CUDA_OF_570:
            return MIN_DRIVER_MAJOR
        return MIN_DRIVER_MAJOR - 1
    return 0


def may_act_on_others(euid: int | None = None, ptrace_scope_path: str = "/proc/sys/kernel/yama/ptrace_scope") -> str:
    """Why this process may not checkpoint its jobs' processes; "" when it may.

    Assumed (not verified on hardware): the driver lets a caller act on a process it could
    ptrace. Root may act on any; another user only on its own processes (gpuosd not run as
    root runs its jobs as its own user), and not where Yama allows ptrace only to admins.
    """
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        return ""
    try:
        with open(ptrace_scope_path) as f:
            scope = int(f.read().strip() or "0")
    except (OSError, ValueError):
        scope = 0  # no Yama: classic ptrace rules, own processes allowed
    if scope >= 2:
        return f"gpuosd runs as uid {euid} and kernel.yama.ptrace_scope is {scope}: only root may act on other processes"
    return ""


def detect(nvml_version: str | None, loader: Callable[[], Driver] = load,
           permission: Callable[[], str] = may_act_on_others) -> tuple[SuspendSupport, Driver | None]:
    """Whether suspend-to-host works on this machine, and the API to do it with."""
    try:
        driver = loader()
    except BackendError as exc:
        return SuspendSupport(False, detail=f"suspend-to-host needs the CUDA checkpoint API: {exc}"), None
    cuda = 0
    if isinstance(driver, BindingsDriver):
        try:
            cuda = driver.driver_cuda_version()
        except BackendError:
            cuda = 0
    major = driver_major(nvml_version, cuda)
    if major < MIN_DRIVER_MAJOR:
        seen = f"r{major}" if major else "an unknown version"
        return SuspendSupport(False, detail=f"the NVIDIA driver is {seen}; suspend-to-host needs r{MIN_DRIVER_MAJOR} "
                                            "or later"), None
    why = permission()
    if why:
        return SuspendSupport(False, detail=why), None
    cross = driver.cross_gpu and major >= GPU_PAIRS_DRIVER_MAJOR
    where = "same or another GPU of its model" if cross else f"same GPU only (another needs r{GPU_PAIRS_DRIVER_MAJOR}+)"
    return SuspendSupport(True, cross_gpu=cross, detail=f"{driver.mechanism}, driver r{major}; restore onto {where}"), driver


def suspend_process(driver: Driver, pid: int, timeout_ms: int = LOCK_TIMEOUT_MS) -> None:
    """Lock then checkpoint ``pid`` (the process must be running, see the module's notes).
    A checkpoint that fails unlocks the process again, so it is left as it was."""
    driver.lock(pid, timeout_ms)
    try:
        driver.checkpoint(pid)
    except BackendError:
        try:
            driver.unlock(pid)
        except BackendError:
            pass  # the checkpoint's error is the one to report
        raise


def restore_process(driver: Driver, pid: int, pairs: Mapping[str, str] | None = None) -> None:
    """Restore then unlock ``pid``. A process found already restored (a restore that a daemon
    restart cut short after the driver finished it) is only unlocked."""
    state = driver.state(pid)
    if state == CHECKPOINTED:
        driver.restore(pid, pairs)
        state = LOCKED
    if state == LOCKED:
        driver.unlock(pid)
    elif state != RUNNING:
        raise BackendError(f"process {pid} is {state} in the CUDA driver; it cannot be restored")


def gpu_pairs(uuids: Sequence[str], source: str, target: str) -> dict[str, str]:
    """The GPU-pair mapping that restores a process checkpointed on ``source`` onto ``target``:
    every GPU named, the two swapped (so the mapping stays one-to-one), the others unchanged."""
    if source not in uuids or target not in uuids:
        raise BackendError(f"GPU {source if source not in uuids else target} is not on this machine")
    swap = {source: target, target: source}
    return {u: swap.get(u, u) for u in uuids}
