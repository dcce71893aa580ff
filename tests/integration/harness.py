"""Test helpers that talk to the real broker and run the real worker command."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic

from chaos.processes import Topics


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


def grow_topic(bootstrap: str, name: str, partitions: int) -> None:
    """Add partitions to a topic, as an operator does (`kafka-topics.sh --alter`)."""

    async def go():
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            response = await admin.create_partitions({name: NewPartitions(partitions)})
        finally:
            await admin.close()
        for _topic, code, message in response.topic_errors:
            assert code == 0, f"could not grow {name}: {message}"

    asyncio.run(go())


def group_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The consumer group's committed offsets of `topic`, partition -> offset."""

    async def go():
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}

    return asyncio.run(go())


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


def _reader(bootstrap: str, topic: str, isolation: str) -> AIOKafkaConsumer:
    """A group-less consumer of every partition of `topic`, from its beginning."""
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level=isolation,
        group_id=None,
    )


def consume_until(
    bootstrap: str,
    topic: str,
    done: Callable[[list[Record]], bool],
    timeout: float = 60.0,
    isolation: str = "read_committed",
) -> list[Record]:
    """Read the topic from the beginning until done(records) holds or the deadline passes.

    For waiting until something is there. What it returns may stop anywhere short of
    the topic's end, so it never shows that something is absent: `settled` does.
    """

    async def go():
        consumer = _reader(bootstrap, topic, isolation)
        await consumer.start()
        records: list[Record] = []
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=200)
                for batch in batches.values():
                    records.extend(_record(m) for m in batch)
                if done(records):
                    return records
            return records
        finally:
            await consumer.stop()

    return asyncio.run(go())


def _record(m) -> Record:
    return Record(
        m.topic,
        m.partition,
        m.offset,
        m.key,
        m.value,
        {k: v for k, v in (m.headers or ())},
        m.timestamp,
    )


def read_to_end(
    bootstrap: str, topic: str, timeout: float = 60.0, isolation: str = "read_committed"
) -> list[Record]:
    """Everything in the topic so far: its end offsets are taken first, then every
    partition is read up to them. Fails when the ends are not reached in time, so an
    empty answer always means an empty topic, never a read that stopped early.

    With read_committed the end offsets are the last stable offsets: every committed
    transaction before them is read in full.
    """

    async def go():
        consumer = _reader(bootstrap, topic, isolation)
        await consumer.start()
        try:
            deadline = time.monotonic() + timeout
            parts = sorted(consumer.assignment())
            while not parts:  # without a group, every partition once the metadata came
                assert time.monotonic() < deadline, f"topic {topic}: no partitions assigned"
                await asyncio.sleep(0.1)  # poll for the assignment
                parts = sorted(consumer.assignment())
            ends = await consumer.end_offsets(parts)
            records: list[Record] = []
            while True:
                behind = [tp for tp in parts if await consumer.position(tp) < ends[tp]]
                if not behind:
                    return records
                assert time.monotonic() < deadline, (
                    f"{topic}: not read to its end offsets {ends} in {timeout:.0f}s"
                )
                batches = await consumer.getmany(*behind, timeout_ms=200)
                for batch in batches.values():
                    records.extend(_record(m) for m in batch if m.offset < ends[tp_of(m)])
        finally:
            await consumer.stop()

    return asyncio.run(go())


def tp_of(m) -> TopicPartition:
    return TopicPartition(m.topic, m.partition)


def for_key(records: list[Record], key: str) -> list[Record]:
    return [r for r in records if r.key == key.encode()]


def wait_for(what: str, condition: Callable[[], object], timeout: float = 60.0):
    """Poll `condition` until it returns something true (returned), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)  # poll with a deadline


def _send_sentinel(bootstrap: str, topics: Topics, partition: int) -> str:
    sentinel = f"barrier-{uuid.uuid4()}"
    record = (sentinel.encode(), event(sentinel, "COMPLETED", sentinel=True))
    produce(bootstrap, topics.raw, [record], partition=partition)
    return sentinel


def barrier(bootstrap: str, topics: Topics, partition: int, timeout: float = 60.0) -> str:
    """Wait until the worker has handled everything produced so far to a raw partition.

    A terminal-only sentinel goes to the same partition after the records under
    test; records of one partition are handled in order and their transactions
    commit in order, so once the sentinel's output is readable (read_committed),
    every output of the earlier records is too. A terminal that found nothing held
    waits for the re-key topic's progress (app.core.merge, "Mixed keying"): the
    sentinel, read after every earlier one, is let go no sooner than they are.
    Returns the sentinel's execution id.
    """
    return _await_sentinels(
        bootstrap, topics, [_send_sentinel(bootstrap, topics, partition)], timeout
    )[0]


def _await_sentinels(
    bootstrap: str, topics: Topics, sentinels: list[str], timeout: float
) -> list[str]:
    got = consume_until(
        bootstrap, topics.output, lambda rs: all(for_key(rs, s) for s in sentinels), timeout
    )
    missing = [s for s in sentinels if not for_key(got, s)]
    assert not missing, f"barrier sentinels {missing} not readable in {timeout:.0f} s"
    return sentinels


def changelog(topics: Topics) -> str:
    """The held table's changelog topic (one partition per raw partition)."""
    return f"{topics.app_id}-held-changelog"


def settled(bootstrap: str, topics: Topics, partitions: Iterable[int], topic: str = "") -> list:
    """Everything the worker wrote to `topic` (the output topic by default, or the
    changelog) for the records produced so far to the raw `partitions`.

    A barrier sentinel goes to each partition (`barrier`), then the topic is read up to its end
    offsets. Each sentinel must be in that read (its output record, or its marker in
    the changelog): the positive control, read in the same pass, that the read saw
    what the worker wrote after the records under test. What the read lacks, the
    worker did not write for them.
    """
    topic = topic or topics.output
    sent = [_send_sentinel(bootstrap, topics, p) for p in partitions]  # all, then wait
    sentinels = _await_sentinels(bootstrap, topics, sent, 60.0)
    records = read_to_end(bootstrap, topic)
    keys = {r.key for r in records}
    prefix = b"e" if topic == changelog(topics) else b""
    missing = [s for s in sentinels if prefix + s.encode() not in keys]
    assert not missing, f"the read of {topic} lacks the barrier sentinels {missing}"
    return records


def partition_of(execution_id: str, partitions: int = 3) -> int:
    from app.engine.processor import partition_for

    return partition_for(execution_id.encode(), partitions)
