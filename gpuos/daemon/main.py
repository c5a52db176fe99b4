"""``gpuosd``: start the daemon."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys

from gpuos.daemon.systemd import Watchdog, notify, watchdog_interval
from gpuos.errors import GpuosError
from gpuos.text import escape


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpuosd", description="gpuos daemon: schedules and shares this machine's GPUs")
    parser.add_argument("--config", help="TOML file with any of the settings below")
    parser.add_argument("--socket", help="Unix socket (default $GPUOS_SOCKET, $XDG_RUNTIME_DIR/gpuos.sock, "
                                         "/run/gpuos/gpuos.sock)")
    parser.add_argument("--listen", help="also serve on TCP HOST:PORT; needs --tls-* (mutual TLS), --token-file, "
                                         "or --insecure-tcp")
    parser.add_argument("--tls-cert", dest="tls_cert", help="TCP: the server's certificate (PEM)")
    parser.add_argument("--tls-key", dest="tls_key", help="TCP: the server's private key (PEM)")
    parser.add_argument("--tls-ca", dest="tls_ca", help="TCP: the CA that signs client certificates; a caller's "
                                                        "tenant is its certificate's common name")
    parser.add_argument("--token-file", dest="token_file", help="TCP: bearer tokens, a mode-0600 file of "
                                                                "\"TOKEN TENANT\" lines")
    parser.add_argument("--insecure-tcp", dest="insecure_tcp", action="store_true", default=None,
                        help="TCP without authentication: every caller acts as tcp_tenant")
    parser.add_argument("--state-dir", dest="state_dir", help="where jobs, logs and the database live")
    parser.add_argument("--backend", choices=["auto", "sim", "nvml"], help="GPU backend (default auto)")
    parser.add_argument("--sim-gpus", dest="sim_gpus", help="simulated GPUs, e.g. 2xH100-80GB or 1xA100-40GB,1xL4")
    parser.add_argument("--policy", help="scheduling policy (see `gpuosctl policy list`)")
    parser.add_argument("--metrics-listen", dest="metrics_listen", help="serve Prometheus metrics on HOST:PORT")
    parser.add_argument("--log-level", dest="log_level", help="DEBUG, INFO, WARNING")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from gpuos.daemon.config import DaemonConfig
    from gpuos.daemon.daemon import Daemon

    overrides = {k: v for k, v in vars(args).items() if k != "config"}
    try:
        config = DaemonConfig.load(args.config, overrides)
    except GpuosError as exc:
        print(f"gpuosd: {escape(str(exc))}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        daemon = Daemon(config)
        daemon.start()
        # Everything loaded so far lives as long as the daemon. Freezing it keeps the collector's
        # full passes (tens of ms here, every call waits them out) to what was made since.
        gc.freeze()
    except (GpuosError, OSError) as exc:
        print(f"gpuosd: {escape(str(exc))}", file=sys.stderr)
        return 1
    print(f"gpuosd: {daemon.backend_reason}; serving on {config.socket}", file=sys.stderr, flush=True)
    notify(f"READY=1\nSTATUS=serving on {config.socket} ({daemon.backend_reason})")
    interval = watchdog_interval()
    watchdog = None
    if interval:
        # The loop rounds at least every few hundred ms; a loop silent for a whole interval is stuck.
        watchdog = Watchdog(interval, lambda now: daemon.controller.alive(now, interval))
        watchdog.start()

    def shutdown(signum: int, _frame: object) -> None:
        logging.getLogger("gpuos.daemon").info("received %s; stopping (running jobs keep running)",
                                               signal.Signals(signum).name)
        notify("STOPPING=1")
        if watchdog is not None:
            watchdog.stop()
        daemon.stop()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    daemon.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
