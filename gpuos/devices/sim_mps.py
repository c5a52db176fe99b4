"""The simulator's MPS control daemon: the command-line contract of ``nvidia-cuda-mps-control``.

    python -m gpuos.devices.sim_mps -d     start the control daemon in the background
    echo quit | python -m gpuos.devices.sim_mps    send commands to the running daemon

Like the real tool it reads ``CUDA_MPS_PIPE_DIRECTORY`` and ``CUDA_MPS_LOG_DIRECTORY``, listens
on ``<pipe>/control``, logs to ``<log>/control.log``, answers ``get_server_list`` and ``quit``,
accepts the limit commands (``set_default_active_thread_percentage`` and the like),
and refuses client commands when no daemon runs. It computes nothing: the simulated GPU's SM
shares are accounted by the simulator backend.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time


def _paths() -> tuple[str, str]:
    pipe = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")
    logs = os.environ.get("CUDA_MPS_LOG_DIRECTORY", "/var/log/nvidia-mps")
    return os.path.join(pipe, "control"), os.path.join(logs, "control.log")


def _log(path: str, text: str) -> None:
    with open(path, "a") as f:
        f.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {text}\n")


def serve() -> None:
    control, log_path = _paths()
    os.makedirs(os.path.dirname(control), exist_ok=True)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    if os.path.exists(control):
        os.unlink(control)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(control)
    listener.listen(16)
    _log(log_path, f"Startup (pid {os.getpid()})")
    while True:
        conn, _ = listener.accept()
        with conn:
            command = conn.recv(4096).decode(errors="replace").strip()
            _log(log_path, f"Accepting connection... command: {command}")
            if command == "quit":
                conn.sendall(b"")
                _log(log_path, "Shutting down")
                listener.close()
                os.unlink(control)
                return
            if command == "get_server_list":
                conn.sendall(b"")
            elif command.startswith(("set_default_active_thread_percentage ", "set_default_device_pinned_mem_limit ",
                                     "set_active_thread_percentage ", "set_device_pinned_mem_limit ")):
                conn.sendall(b"")  # accepted (and logged above); the simulator's shares are accounted by the backend
            else:
                conn.sendall(f"unknown command {command}\n".encode())


def daemonize() -> None:
    if os.fork():
        return
    os.setsid()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    try:
        serve()
    finally:
        os._exit(0)


def client() -> int:
    control, _ = _paths()
    for line in sys.stdin:
        command = line.strip()
        if not command:
            continue
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(control)
        except OSError:
            print("Cannot find MPS control daemon process", file=sys.stderr)
            return 1
        with sock:
            sock.sendall(command.encode())
            sock.shutdown(socket.SHUT_WR)
            reply = sock.recv(4096)
            sys.stdout.write(reply.decode(errors="replace"))
    return 0


def main() -> int:
    if sys.argv[1:] == ["-d"]:
        daemonize()
        return 0
    return client()


if __name__ == "__main__":
    sys.exit(main())
