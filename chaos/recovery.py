"""The recovery figures: a worker (a static group member) killed while holding N RUNNING
executions, (a) restarted with its RocksDB kept, (c) restarted with it wiped, and (b)
killed for good while a second worker keeps a standby replica of its partitions: how
long until its partitions' executions merge again."""

from __future__ import annotations

import asyncio
import shutil
import time
import urllib.request
import uuid
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

import localkafka
import simulator
from app.engine.processor import partition_for
from app.kafka import probes
from app.kafka.connection import Connection

from .processes import Topics, WorkerProcess
from .run import say

GOAL_KEPT, GOAL_TAKEOVER, GOAL_WIPED = 5.0, 15.0, 120.0
PARTITIONS = 6


async def _produce(kafka: Connection, topic: str, records, progress_every: int = 20_000) -> None:
    producer = AIOKafkaProducer(
        **kafka.aiokafka_kwargs(), enable_idempotence=True, linger_ms=20, max_batch_size=256_000
    )
    await producer.start()
    try:
        for i, (key, value) in enumerate(records, 1):
            await producer.send(topic, value, key=key)
            if i % progress_every == 0:
                await producer.flush()
                say(f"produced {i} RUNNING events")
        await producer.flush()
    finally:
        await producer.stop()


async def _lag(kafka: Connection, topics: Topics) -> int:
    admin = AIOKafkaAdminClient(**kafka.aiokafka_kwargs())
    consumer = AIOKafkaConsumer(**kafka.aiokafka_kwargs())
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(topics.app_id)
        parts = [tp for tp in committed if tp.topic == topics.raw]
        if not parts:
            return 1 << 60
        ends = await consumer.end_offsets(parts)
        return sum(ends[tp] - committed[tp].offset for tp in parts)
    finally:
        await consumer.stop()
        await admin.close()


async def _probe(kafka: Connection, topics: Topics, execution_id: str, timeout: float) -> float:
    """Send the terminal event of a held execution; seconds until its merge is readable."""
    consumer = AIOKafkaConsumer(
        topics.output,
        **kafka.aiokafka_kwargs(),
        isolation_level="read_committed",
        auto_offset_reset="latest",
    )
    await consumer.start()
    producer = AIOKafkaProducer(**kafka.aiokafka_kwargs(), enable_idempotence=True)
    await producer.start()
    try:
        while not consumer.assignment():
            await asyncio.sleep(0.1)  # poll: wait for the consumer's assignment
        await consumer.seek_to_end()
        value = orjson.dumps({"execution_id": execution_id, "status": "COMPLETED"})
        await producer.send_and_wait(topics.raw, value, key=execution_id.encode())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                for m in batch:
                    if m.key == execution_id.encode():
                        merged = orjson.loads(m.value)
                        if "route_id" not in merged:  # the held RUNNING was not recovered
                            raise AssertionError(f"{execution_id} came out without its RUNNING")
                        return time.monotonic()
        raise TimeoutError(f"no merge for {execution_id} in {timeout:.0f}s")
    finally:
        await producer.stop()
        await consumer.stop()


def _owned(worker: WorkerProcess) -> set[int]:
    """The raw partitions a worker owns, once it is ready (else none)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/ready", timeout=5) as r:
            return set(orjson.loads(r.read())["partitions"])
    except OSError:
        return set()


async def _last_records(kafka: Connection, topic: str, partitions) -> dict[int, int]:
    """Offset of the last committed record of each partition of a changelog (-1: none)."""
    async with probes.reader(kafka, "read_committed") as consumer:
        tps = [TopicPartition(topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps)
    after = await probes.after_last_records(kafka, ends)
    return {tp.partition: (after[tp] or 0) - 1 for tp in tps}


def _wait(what: str, check, timeout: float = 600.0):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.5)  # poll
    return value


@dataclass
class Figures:
    kept: float  # (a) killed, restarted with its state: its partitions merge again
    takeover: float  # (b) killed for good: another worker takes over from its standby
    wiped: float  # (c) killed, restarted with its state wiped


def measure(held: int = 100_000, seed: int = 1) -> Figures:
    run = uuid.uuid4().hex[:8]
    work = localkafka.CACHE_DIR / "recovery" / run
    topics = Topics.fresh(run)
    broker = localkafka.start(data_dir=work / "kafka")
    kafka = Connection(bootstrap_servers=broker.bootstrap)  # every client of the run

    def worker(n: int) -> WorkerProcess:
        # static members: a restart within the session timeout moves no partition
        env = {"CAMELEER_INSTANCE_ID": f"recovery-w{n}"}
        return WorkerProcess(kafka, topics, work / f"w{n}", extra_env=env)

    w0, w1 = worker(0), worker(1)
    try:
        say(f"broker at {broker.bootstrap}; generating {held} RUNNING executions")

        async def prepare():
            admin = AIOKafkaAdminClient(**kafka.aiokafka_kwargs())
            await admin.start()
            try:
                await admin.create_topics([NewTopic(topics.raw, PARTITIONS, 1)])
            finally:
                await admin.close()

        asyncio.run(prepare())
        workload = simulator.iter_steps(seed, held, **simulator.only(stuck_share=1.0))
        ids: list[str] = []

        def records():
            for step in workload:
                ids.append(step.execution.execution_id)
                yield step.record.key, step.record.value

        w0.start()
        asyncio.run(_produce(kafka, topics.raw, records()))
        deadline = time.monotonic() + 900
        while True:
            lag = asyncio.run(_lag(kafka, topics))
            if lag == 0:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not catch up")
            say(f"worker catching up: {lag} RUNNING events not yet committed")
            time.sleep(3)  # poll the committed offsets
        probes_left = iter(ids)
        figures = {}
        for name, wipe in (("kept", False), ("wiped", True)):
            say(f"holding {held} RUNNING executions; SIGKILL the worker")
            w0.kill()
            if wipe:
                w0.wipe()
            started = time.monotonic()
            w0.start(wait=False)
            say(f"restarted with RocksDB {'wiped' if wipe else 'kept'}; probing")
            done = asyncio.run(_probe(kafka, topics, next(probes_left), timeout=600))
            figures[name] = done - started
            say(f"processing again after {figures[name]:.1f}s")

        say("a second worker joins; it keeps a standby replica of the first one's partitions")
        w1.start()
        mine = _wait("the partitions split", lambda: _split(w0, w1))
        changelog = f"{topics.app_id}-held-changelog"
        last = asyncio.run(_last_records(kafka, changelog, mine))

        def standby_current() -> bool:
            read = {int(p): o for p, o in (w1.stats() or {}).get("standbys", {}).items()}
            return all(read.get(p, -1) >= last[p] for p in mine)

        _wait("the standby replica to catch up", standby_current)
        say(f"SIGKILL the first worker for good (it owned partitions {sorted(mine)})")
        probe = next(e for e in probes_left if partition_for(e.encode(), PARTITIONS) in mine)
        w0.kill()
        started = time.monotonic()
        done = asyncio.run(_probe(kafka, topics, probe, timeout=600))
        figures["takeover"] = done - started
        say(f"the second worker merges them after {figures['takeover']:.1f}s")
        w1.stop()
        return Figures(**figures)
    finally:
        w0.kill()
        w1.kill()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def _split(w0: WorkerProcess, w1: WorkerProcess) -> set[int] | None:
    """The first worker's partitions, once both own some and they cover the topic."""
    p0, p1 = _owned(w0), _owned(w1)
    if p0 and p1 and not p0 & p1 and p0 | p1 == set(range(PARTITIONS)):
        return p0
    return None


def main_recovery(held: int) -> int:
    f = measure(held)
    rows = [
        ("held RUNNING executions", f"{held}"),
        ("(a) killed, restarted, RocksDB kept", f"{f.kept:.1f} s (goal < {GOAL_KEPT:.0f} s)"),
        (
            "(b) killed, standby takes over",
            f"{f.takeover:.1f} s (goal < {GOAL_TAKEOVER:.0f} s)",
        ),
        ("(c) killed, restarted, RocksDB wiped", f"{f.wiped:.1f} s (goal < {GOAL_WIPED:.0f} s)"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return 0
