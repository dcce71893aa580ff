"""`python -m localkafka fetch|up|down|status|run -- CMD...` (what the Makefile calls)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from . import (
    PROJECT_DIR,
    SetupError,
    answers,
    ensure_jars,
    main_error,
    parse_bootstrap,
    start,
    stop_pid,
)

LOCAL_DATA = PROJECT_DIR / ".kafka"
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}


def _bootstrap() -> tuple[str, int]:
    return parse_bootstrap(os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"))


def _start_local(host: str, port: int):
    if host not in LOCAL_HOSTS:
        raise SetupError(
            f"no Kafka broker answers at {host}:{port}, and only a broker on this machine "
            "(localhost) can be started here"
        )
    print(
        f"localkafka: no broker at {host}:{port}; starting one (data in {LOCAL_DATA})", flush=True
    )
    broker = start(port=port, data_dir=LOCAL_DATA, detach=True)
    print(f"localkafka: broker up at {broker.bootstrap} (pid {broker.pid})", flush=True)
    return broker


def cmd_up(_: argparse.Namespace) -> int:
    host, port = _bootstrap()
    if answers(host, port):
        print(f"localkafka: a broker already answers at {host}:{port}")
        return 0
    _start_local(host, port)
    return 0


def cmd_down(_: argparse.Namespace) -> int:
    pidfile = LOCAL_DATA / "broker.pid"
    if not pidfile.exists():
        print("localkafka: no local broker was started here")
        return 0
    stop_pid(int(pidfile.read_text()))
    pidfile.unlink()
    print("localkafka: local broker stopped")
    return 0


def cmd_status(_: argparse.Namespace) -> int:
    host, port = _bootstrap()
    up = answers(host, port)
    print(f"localkafka: broker at {host}:{port} {'answers' if up else 'does not answer'}")
    return 0 if up else 1


def cmd_fetch(_: argparse.Namespace) -> int:
    print(f"localkafka: jars in {ensure_jars()}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run CMD in the foreground; start the broker first when none answers, stop it after."""
    command = [c for c in args.command if c != "--"]
    if not command:
        raise SetupError("run needs a command after --")
    host, port = _bootstrap()
    broker = None if answers(host, port) else _start_local(host, port)
    child = subprocess.Popen(command)

    def forward(signum, _frame):
        if child.poll() is None:
            child.send_signal(signum)

    # Ctrl-C reaches the child through the terminal's process group already; SIGTERM
    # sent to us alone is passed on. Either way we wait for it, then stop our broker.
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGTERM, forward)
    try:
        code = child.wait()
    finally:
        if broker is not None:
            print("localkafka: stopping the broker started for this run", flush=True)
            broker.stop()
            (Path(broker.data_dir) / "broker.pid").unlink(missing_ok=True)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localkafka", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="fetch the broker jars (once)").set_defaults(fn=cmd_fetch)
    sub.add_parser("up", help="start the local broker unless one answers").set_defaults(fn=cmd_up)
    sub.add_parser("down", help="stop the local broker").set_defaults(fn=cmd_down)
    sub.add_parser("status", help="does a broker answer?").set_defaults(fn=cmd_status)
    run = sub.add_parser("run", help="run a command with a broker available")
    run.add_argument("command", nargs=argparse.REMAINDER)
    run.set_defaults(fn=cmd_run)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except SetupError as exc:
        main_error(exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
