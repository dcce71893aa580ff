"""Short reads from the broker with a consumer of their own (no group, no commits).

Rare by design: when recovery starts (where a changelog's last record is) and
when an assignment resumes or continues past where it should (what lies there).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaConsumer, TopicPartition

from app.kafka.connection import Connection

log = logging.getLogger(__name__)


async def stop_quietly(consumer: AIOKafkaConsumer) -> None:
    """Stop a group-less aiokafka consumer.

    Its coordinator's close() cancels a task and then awaits it, so stop() raises
    CancelledError into a caller nobody cancelled (seen: it killed Faust's recovery).
    """
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # a real cancellation of ours: pass it on


# A new consumer knows no topic yet: its first request on one fails for want of
# metadata, and aiokafka sleeps this long before it asks again (100 ms by default, paid
# by each probe of a recovery, on the way to a restarted worker's first record). Also
# the pause between its retries while a broker is down: short, but no busy loop.
PROBE_RETRY_BACKOFF_MS = 20


@asynccontextmanager
async def reader(connection: Connection, isolation_level: str) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(
        **connection.aiokafka_kwargs(),
        isolation_level=isolation_level,
        enable_auto_commit=False,
        retry_backoff_ms=PROBE_RETRY_BACKOFF_MS,
    )
    try:
        await consumer.start()
        yield consumer
    finally:
        await stop_quietly(consumer)


def _at(consumer: AIOKafkaConsumer, tp, offset: int) -> TopicPartition:
    atp = TopicPartition(tp.topic, tp.partition)
    consumer.assign([atp])
    consumer.seek(atp, offset)
    return atp


async def first_record_at(
    connection: Connection, isolation_level: str, tp, start: int
) -> int | None:
    """Offset of the first record readable at or after `start` (None: none within 10 s)."""
    async with reader(connection, isolation_level) as consumer:
        atp = _at(consumer, tp, start)
        for _ in range(10):
            batch = await consumer.getmany(atp, timeout_ms=1000, max_records=1)
            if batch.get(atp):
                return batch[atp][0].offset
        return None


class OpenTransactions(RuntimeError):
    """A previous owner's transaction on a changelog partition did not end in time."""


async def ends_without_open_transactions(
    connection: Connection, tps, deadline_s: float = 60.0
) -> dict:
    """The last stable offsets of changelog partitions this worker now owns, once no
    transaction is open on them.

    A transaction open there belongs to a previous owner: crashed (the broker aborts
    it at the transaction timeout, or at once if the same worker restarts) or a
    zombie. While it is open, the last stable offset stops at its first record, and
    records committed after it (by the owner in between) are not yet readable with
    read_committed: a recovery that stopped there would miss them and resume the
    source partitions from offsets that already include them, and a stale flush
    there could put a RUNNING after its terminal record.
    """
    atps = [TopicPartition(tp.topic, tp.partition) for tp in tps]
    if not atps:
        return {}
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + deadline_s
    said = False
    async with (
        reader(connection, "read_committed") as committed,
        reader(connection, "read_uncommitted") as written,
    ):
        while True:
            stable = await committed.end_offsets(atps)
            high = await written.end_offsets(atps)
            open_ = sorted(f"{tp.topic}[{tp.partition}]" for tp in atps if stable[tp] < high[tp])
            if not open_:
                if said:
                    log.info("changelog transactions of previous owners ended: recovering")
                return {tp: stable[TopicPartition(tp.topic, tp.partition)] for tp in tps}
            if loop.time() > stop_at:
                raise OpenTransactions(
                    f"transactions still open on {', '.join(open_)} after {deadline_s:.0f} s"
                )
            if not said:
                log.info("waiting for open transactions of previous owners on %s", open_)
                said = True
            await asyncio.sleep(0.25)  # poll: the broker ends them at its own pace


async def after_last_records(connection: Connection, ends, deadline_s: float = 30.0) -> dict:
    """Per changelog partition, the offset after its last committed record.

    A transactional changelog ends with a commit marker, which no consumer ever
    receives: Faust's recovery, waiting for a record at the last stable offset,
    only gives up after two 5 s idle rounds, on every assignment. The offset after
    the last record it can receive ends recovery when that record is read (or at
    once, when the local RocksDB already holds it).
    """
    out = dict(ends)
    try:
        async with reader(connection, "read_committed") as consumer:
            stop_at = asyncio.get_running_loop().time() + deadline_s
            for tp, end in ends.items():
                out[tp] = await _after_last_record(consumer, tp, end, stop_at)
    except Exception as exc:  # a slower recovery, not a wrong one
        log.warning("recovery end offsets: %r; using the last stable offsets", exc)
        return dict(ends)
    return out


async def _after_last_record(consumer, tp, end: int | None, stop_at: float) -> int | None:
    if not end:
        return end
    window = 64
    while True:
        start = max(end - window, 0)
        atp = _at(consumer, tp, start)
        last = None
        while await consumer.position(atp) < end:
            if asyncio.get_running_loop().time() > stop_at:
                return end
            batch = await consumer.getmany(atp, timeout_ms=500)
            for record in batch.get(atp, ()):
                if record.offset < end:
                    last = record.offset
        if last is not None:
            return last + 1
        if start == 0:
            return 0  # markers and aborted records only: nothing to recover
        window *= 8


async def standby_ends(connection: Connection, ends: dict) -> dict:
    """End offsets of standby changelog partitions for Faust's consistency check: the
    log's end where it is past the last stable offset.

    A standby's persisted offset can be past the last stable offset without anything
    being wrong: this worker owned the partition a moment ago and committed records
    there, and a zombie's doomed transaction, open since before them, holds the last
    stable offset back until the broker aborts it. Faust's recovery takes a persisted
    offset past the end for a changelog that lost records and crashes the worker
    (chaos: ConsistencyError, then a restart). The standby itself still reads with
    read_committed, from its persisted offset on.
    """
    tps = [tp for tp in ends]
    if not tps:
        return dict(ends)
    async with reader(connection, "read_uncommitted") as consumer:
        written = await consumer.end_offsets([TopicPartition(tp.topic, tp.partition) for tp in tps])
    return {
        tp: max(end or 0, written[TopicPartition(tp.topic, tp.partition)])
        for tp, end in ends.items()
    }
