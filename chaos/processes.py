"""Worker processes as an operator runs them: the real `cameleer-merger` command."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import orjson

import localkafka
from app.kafka.connection import Connection

# The real command, as installed by `pip install -e .`: what `make run` starts.
WORKER_COMMAND = [str(Path(sys.executable).parent / "cameleer-merger")]


@dataclass
class Topics:
    raw: str
    output: str
    dlq: str
    agents: str
    app_id: str

    @classmethod
    def fresh(cls, run: str) -> Topics:
        return cls(f"raw-{run}", f"out-{run}", f"dlq-{run}", f"agents-{run}", f"merger-{run}")

    def env(self) -> dict[str, str]:
        return {
            "CAMELEER_RAW_TOPIC": self.raw,
            "CAMELEER_OUTPUT_TOPIC": self.output,
            "CAMELEER_DLQ_TOPIC": self.dlq,
            "CAMELEER_AGENTS_TOPIC": self.agents,
            "CAMELEER_APP_ID": self.app_id,
        }


@dataclass
class WorkerProcess:
    """One worker: its own state folder and web port, started, stopped, killed, wiped."""

    connection: Connection | str  # a bare bootstrap address: PLAINTEXT
    topics: Topics
    state_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    web_port: int = 0
    starts: int = 0
    command: list[str] | None = None  # another installation's cameleer-merger

    def __post_init__(self) -> None:
        if isinstance(self.connection, str):
            self.connection = Connection(bootstrap_servers=self.connection)

    @property
    def web(self) -> bool:
        """False when the worker runs without its HTTP endpoints (CAMELEER_WEB_PORT=0)."""
        return self.extra_env.get("CAMELEER_WEB_PORT") != "0"

    def start(self, ready_timeout: float = 120.0, wait: bool = True) -> None:
        # a restart keeps the port, as a StatefulSet's pod keeps its address: a static
        # member restarted at the address the group knows needs no rebalance
        if self.web and not self.web_port:
            self.web_port = localkafka.free_port()
        elif not self.web:
            self.web_port = 0
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            **self.connection.env(),  # every KAFKA_* setting, also those it leaves empty
            **self.topics.env(),
            "CAMELEER_STATE_DIR": str(self.state_dir / "rocksdb"),
            "CAMELEER_WEB_PORT": str(self.web_port),
            "PYTHONUNBUFFERED": "1",  # a SIGKILL must not take the last log lines with it
            **self.extra_env,
        }
        self.starts += 1
        self.log_path = self.state_dir / f"worker-{self.starts}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command or WORKER_COMMAND,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if wait:
            self.wait_ready(ready_timeout)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                code = self.process.returncode
                raise RuntimeError(f"worker exited early (code {code}):\n{self.log_tail()}")
            if self.ready:
                return
            time.sleep(0.2)  # poll for readiness
        self.kill()  # a worker that never got ready must not outlive its caller
        raise RuntimeError(f"worker not ready in {timeout:.0f}s:\n{self.log_tail()}")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def ready(self) -> bool:
        try:
            ready = b"Worker]: Ready" in self.log_path.read_bytes()
            return ready and (not self.web or self.stats() is not None)
        except OSError:
            return False

    def stats(self) -> dict | None:
        if not self.web:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/stats", timeout=2) as r:
                return orjson.loads(r.read())
        except OSError:
            return None

    def counts(self, timeout: float = 30.0) -> dict[str, int]:
        """The worker's counters from /stats, asked again until `timeout` when it does not
        answer (a busy worker, a loaded machine). Raises rather than answer {}: a caller
        comparing with a baseline it could not read would compare with nothing."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if stats is not None:
                return stats["counts"]
            if not self.web:
                raise RuntimeError("the worker runs without /stats (CAMELEER_WEB_PORT=0)")
            if not self.alive:
                raise RuntimeError(f"the worker is down: no counts\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise RuntimeError(f"/stats did not answer in {timeout:.0f}s")
            time.sleep(0.2)  # poll /stats with a deadline

    def exit_reason(self) -> str:
        """Why the worker stopped by itself: its first CRITICAL line, else its last line."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        critical = [line for line in lines if "[CRITICAL]" in line]
        return (critical or [line for line in lines if line.strip()] or ["(empty log)"])[
            0 if critical else -1
        ]

    def last_error(self) -> str:
        """The last line of the log's last traceback (the exception), or "(none)"."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        starts = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
        if not starts:
            return "(none)"
        for line in lines[starts[-1] + 1 :]:
            if line and not line.startswith((" ", "Traceback", "During handling")):
                return line
        return "(none)"

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, as an orchestrator stops a worker; SIGKILL after `timeout`."""
        if not self.alive:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        """SIGKILL: no chance to commit, flush or close anything."""
        if self.alive:
            self.process.kill()
            self.process.wait()

    def pause(self) -> None:
        """SIGSTOP: the worker freezes mid-flight, as in a long GC pause or a VM stall."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def wipe(self) -> None:
        """Delete the local RocksDB state (the worker must be down)."""
        assert not self.alive
        shutil.rmtree(self.state_dir / "rocksdb", ignore_errors=True)
