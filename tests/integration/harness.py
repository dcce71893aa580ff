"""Test helpers that talk to the real broker and run the real worker command."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

import localkafka

# The real command, as installed by `pip install -e .`: what `make run` starts.
WORKER = [str(Path(sys.executable).parent / "cameleer-merger")]


@dataclass
class Topics:
    raw: str
    output: str
    dlq: str
    agents: str
    app_id: str


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp_ms: int

    @property
    def json(self):
        return orjson.loads(self.value)

    @property
    def origin(self) -> str:
        return self.headers.get("cameleer-origin", b"").decode()


def create_topic(bootstrap: str, name: str, partitions: int, config: dict | None = None) -> None:
    async def go():
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=config or {})])
        finally:
            await admin.close()

    asyncio.run(go())


def describe_config(bootstrap: str, topic: str) -> dict[str, str]:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    async def go():
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            res = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            partitions = len((await admin.describe_topics([topic]))[0]["partitions"])
        finally:
            await admin.close()
        entries = res[0].resources[0][4]
        config = {e[0]: e[1] for e in entries}
        config["__partitions__"] = str(partitions)
        return config

    return asyncio.run(go())


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None] | tuple[bytes | None, bytes | None, list]],
    partition: int | None = None,
    timestamp_ms: int | None = None,
) -> list[tuple[int, int]]:
    """Produce in order, each one acknowledged before the next; returns (partition, offset)."""

    async def go():
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, enable_idempotence=True, max_request_size=4_000_000
        )
        await producer.start()
        try:
            placed = []
            for rec in records:
                key, value, *rest = rec
                headers = rest[0] if rest else None
                meta = await producer.send_and_wait(
                    topic,
                    value,
                    key=key,
                    partition=partition,
                    headers=headers,
                    timestamp_ms=timestamp_ms,
                )
                placed.append((meta.partition, meta.offset))
            return placed
        finally:
            await producer.stop()

    return asyncio.run(go())


def event(execution_id: str, status: str, **fields) -> bytes:
    return orjson.dumps({"execution_id": execution_id, "status": status, **fields})


def consume_until(
    bootstrap: str,
    topic: str,
    done: Callable[[list[Record]], bool],
    timeout: float = 60.0,
    isolation: str = "read_committed",
) -> list[Record]:
    """Read the topic from the beginning until done(records) holds or the deadline passes."""

    async def go():
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level=isolation,
            group_id=None,
        )
        await consumer.start()
        records: list[Record] = []
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=200)
                for batch in batches.values():
                    for m in batch:
                        records.append(
                            Record(
                                m.topic,
                                m.partition,
                                m.offset,
                                m.key,
                                m.value,
                                {k: v for k, v in (m.headers or ())},
                                m.timestamp,
                            )
                        )
                if done(records):
                    return records
            return records
        finally:
            await consumer.stop()

    return asyncio.run(go())


def for_key(records: list[Record], key: str) -> list[Record]:
    return [r for r in records if r.key == key.encode()]


@dataclass
class WorkerProcess:
    """The `cameleer-merger` command as a child process."""

    bootstrap: str
    topics: Topics
    state_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    web_port: int = 0

    def start(self, ready_timeout: float = 90.0) -> None:
        self.web_port = localkafka.free_port()
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "CAMELEER_RAW_TOPIC": self.topics.raw,
            "CAMELEER_OUTPUT_TOPIC": self.topics.output,
            "CAMELEER_DLQ_TOPIC": self.topics.dlq,
            "CAMELEER_AGENTS_TOPIC": self.topics.agents,
            "CAMELEER_APP_ID": self.topics.app_id,
            "CAMELEER_STATE_DIR": str(self.state_dir),
            "CAMELEER_WEB_PORT": str(self.web_port),
            **self.extra_env,
        }
        self.log_path = self.state_dir / f"worker-{self.web_port}.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child writes to it
        self.process = subprocess.Popen(
            WORKER, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.log_tail()}")
            if self.stats() is not None and b"Worker]: Ready" in self.log_path.read_bytes():
                return
            time.sleep(0.2)  # poll for readiness
        raise AssertionError(f"worker not ready in {ready_timeout}s:\n{self.log_tail()}")

    def stats(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/stats", timeout=2) as r:
                return orjson.loads(r.read())
        except OSError:
            return None

    def counts(self) -> dict[str, int]:
        stats = self.stats()
        return stats["counts"] if stats else {}

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def barrier(bootstrap: str, topics: Topics, partition: int, timeout: float = 60.0) -> None:
    """Wait until the worker has handled everything produced so far to a raw partition.

    A terminal-only sentinel goes to the same partition after the records under
    test; records of one partition are handled in order and their transactions
    commit in order, so once the sentinel's output is readable (read_committed),
    every output of the earlier records is too.
    """
    sentinel = f"barrier-{uuid.uuid4()}"
    produce(
        bootstrap,
        topics.raw,
        [(sentinel.encode(), event(sentinel, "COMPLETED", sentinel=True))],
        partition=partition,
    )
    got = consume_until(bootstrap, topics.output, lambda rs: bool(for_key(rs, sentinel)), timeout)
    assert for_key(got, sentinel), f"barrier on partition {partition} timed out"


def partition_of(execution_id: str, partitions: int = 3) -> int:
    from app.processor import partition_for

    return partition_for(execution_id.encode(), partitions)
