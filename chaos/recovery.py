"""The recovery figure: a worker killed while holding N RUNNING executions, restarted
with its RocksDB kept and with it wiped; how long until it processes again."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

import localkafka
import simulator
from app.connection import Connection

from .processes import Topics, WorkerProcess
from .run import say

GOAL_KEPT, GOAL_WIPED = 30.0, 120.0


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


def measure(held: int = 100_000, seed: int = 1) -> tuple[float, float]:
    run = uuid.uuid4().hex[:8]
    work = localkafka.CACHE_DIR / "recovery" / run
    topics = Topics.fresh(run)
    broker = localkafka.start(data_dir=work / "kafka")
    kafka = Connection(bootstrap_servers=broker.bootstrap)  # every client of the run
    worker = WorkerProcess(kafka, topics, work / "w0")
    try:
        say(f"broker at {broker.bootstrap}; generating {held} RUNNING executions")

        async def prepare():
            admin = AIOKafkaAdminClient(**kafka.aiokafka_kwargs())
            await admin.start()
            try:
                await admin.create_topics([NewTopic(topics.raw, 6, 1)])
            finally:
                await admin.close()

        asyncio.run(prepare())
        workload = simulator.iter_steps(seed, held, **simulator.only(stuck_share=1.0))
        ids: list[str] = []

        def records():
            for step in workload:
                ids.append(step.execution.execution_id)
                yield step.record.key, step.record.value

        worker.start()
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
        say(f"holding {held} RUNNING executions; SIGKILL")
        figures = []
        for wipe, probe in ((False, ids[0]), (True, ids[1])):
            worker.kill()
            if wipe:
                worker.wipe()
            started = time.monotonic()
            worker.start(wait=False)
            say(f"restarted with RocksDB {'wiped' if wipe else 'kept'}; probing")
            done = asyncio.run(_probe(kafka, topics, probe, timeout=600))
            figures.append(done - started)
            say(f"processing again after {figures[-1]:.1f}s")
        worker.stop()
        return figures[0], figures[1]
    finally:
        worker.kill()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def main_recovery(held: int) -> int:
    kept, wiped = measure(held)
    rows = [
        ("held RUNNING executions", f"{held}"),
        ("recovery, RocksDB kept", f"{kept:.1f} s (goal < {GOAL_KEPT:.0f} s)"),
        ("recovery, RocksDB wiped", f"{wiped:.1f} s (goal < {GOAL_WIPED:.0f} s)"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return 0
