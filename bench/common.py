"""What every benchmark phase shares: logging, the broker, topics, process sampling."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

import localkafka
from app.kafka.connection import Connection
from chaos.processes import Topics, WorkerProcess

PARTITIONS = 6
WORK_DIR = localkafka.CACHE_DIR / "bench"
PROGRESS_EVERY = 5.0  # seconds between progress lines


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Progress:
    """Prints a line at most every PROGRESS_EVERY seconds: long phases show they move."""

    def __init__(self, what: str, total: int | None = None) -> None:
        self.what = what
        self.total = total
        self.started = time.monotonic()
        self.last = self.started
        self.last_done = 0

    def tick(self, done: int, extra: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < PROGRESS_EVERY:
            return
        rate = (done - self.last_done) / max(now - self.last, 1e-9)
        self.last, self.last_done = now, done
        pct = f" ({100.0 * done / self.total:5.1f}%)" if self.total else ""
        total = f"/{self.total:,}" if self.total else ""
        tail = f", {extra}" if extra else ""
        say(f"{self.what}: {done:,}{total}{pct}, {rate:,.0f}/s{tail}")


@contextlib.contextmanager
def broker_for_run(run_dir: Path) -> Iterator[tuple[Connection, str]]:
    """(connection, where): the KAFKA_* settings' brokers when they answer (TLS and SASL
    included), else a plaintext broker of our own."""
    kafka = Connection.from_env()
    host, port = localkafka.parse_bootstrap(kafka.bootstrap_servers)
    if localkafka.answers(host, port):
        say(f"using the broker that answers at {kafka.describe()}")
        yield kafka, f"existing broker at {kafka.bootstrap_servers}"
        return
    where = run_dir / "kafka"
    say(f"no broker at {kafka.bootstrap_servers}; starting a local one (data in {where})")
    broker = localkafka.start(data_dir=where)
    say(f"local broker up at {broker.bootstrap} (pid {broker.pid})")
    try:
        yield (
            Connection(bootstrap_servers=broker.bootstrap),
            f"local broker started for the run (pid {broker.pid})",
        )
    finally:
        say("stopping the local broker")
        broker.stop()


def fresh_topics(phase: str) -> Topics:
    return Topics.fresh(f"bench-{phase}-{uuid.uuid4().hex[:8]}")


async def create_topics(kafka: Connection, topics: Topics, extra: tuple[str, ...] = ()) -> None:
    """The raw topic with PARTITIONS partitions (and extra sinks); the worker makes the rest."""
    admin = AIOKafkaAdminClient(**kafka.aiokafka_kwargs())
    await admin.start()
    try:
        new = [NewTopic(name, PARTITIONS, 1) for name in (topics.raw, *extra)]
        new.append(NewTopic(topics.agents, 1, 1, topic_configs={"cleanup.policy": "compact"}))
        await admin.create_topics(new)
    finally:
        await admin.close()


async def delete_topics(kafka: Connection, names: list[str]) -> None:
    """Free the broker's disk after a phase (best effort)."""
    admin = AIOKafkaAdminClient(**kafka.aiokafka_kwargs())
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        doomed = [n for n in names if n in existing]
        if doomed:
            await admin.delete_topics(doomed)
    except Exception as exc:  # cleanup must never hide the figures
        say(f"could not delete topics {names}: {exc!r}")
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def all_topics(topics: Topics, *extra: str) -> list[str]:
    """Every topic of a topic set, the worker's internal ones included."""
    return [
        topics.raw,
        topics.output,
        topics.dlq,
        topics.agents,
        f"{topics.app_id}-rekey",
        f"{topics.app_id}-held-changelog",
        *extra,
    ]


def read_committed_consumer(kafka: Connection, topic: str, **kw) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        **kafka.aiokafka_kwargs(),
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        **kw,
    )


async def wait_assigned(consumer: AIOKafkaConsumer, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not consumer.assignment():
        if time.monotonic() > deadline:
            raise TimeoutError("the consumer got no partitions")
        await asyncio.sleep(0.1)  # poll: assignment arrives with the first metadata


def dir_bytes(path: Path) -> int:
    """Like `du -sb`: the bytes of every file under path."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def mb(n: float) -> float:
    return n / (1024 * 1024)


@dataclass
class Sampler:
    """Samples a process tree's RSS (and CPU) every `interval` seconds in a thread."""

    pid: int
    interval: float = 0.5
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, rss)
    peak: int = 0
    cpu_seconds: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = 0.0

    def start(self) -> Sampler:
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.pid)
        return [root, *root.children(recursive=True)]

    def _run(self) -> None:
        cpu: dict[int, float] = {}
        while not self._stop.is_set():
            try:
                procs = self._tree()
            except psutil.Error:
                break
            rss = 0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
                    t = p.cpu_times()
                    cpu[p.pid] = t.user + t.system
            self.samples.append((time.monotonic() - self._t0, rss))
            self.peak = max(self.peak, rss)
            self.cpu_seconds = sum(cpu.values())
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def last_rss(self) -> int:
        return self.samples[-1][1] if self.samples else 0


def cpu_of(pid: int | None) -> float | None:
    """CPU seconds used so far by a process (None when unknown)."""
    if pid is None:
        return None
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return None


def broker_pid(bootstrap: str) -> int | None:
    """The pid listening on the bootstrap port, when it is on this machine and visible."""
    _, port = localkafka.parse_bootstrap(bootstrap)
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return conn.pid
    return None


def start_worker(kafka: Connection, topics: Topics, state_dir: Path, **env: str) -> WorkerProcess:
    """The real `cameleer-merger` command, exactly_once unless env says otherwise."""
    worker_env = {
        "CAMELEER_STALE_AFTER": "3600",  # no stale flush during a benchmark
        "CAMELEER_PROCESSING_GUARANTEE": "exactly_once",
        **env,
    }
    worker = WorkerProcess(kafka, topics, state_dir, worker_env)
    worker.start(wait=False)
    return worker


def worker_counts(worker: WorkerProcess) -> dict[str, int]:
    try:
        return worker.counts(timeout=0)  # one try: the bench polls again itself
    except Exception:
        return {}


HANDLED_KEYS = (
    "merged",
    "terminal_only",
    "passthrough",
    "running_held",
    "running_repeated",
    "running_joined",
    "running_after_terminal",
    "duplicate_terminal",
    "rekeyed",
    "too_large",
)


def handled(counts: dict[str, int]) -> int:
    """Records the worker has handled, by its /stats counters."""
    return sum(counts.get(k, 0) for k in HANDLED_KEYS) + sum(
        v for k, v in counts.items() if k.startswith("dlq_")
    )
