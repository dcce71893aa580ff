"""A standby's end offset is the log's end when a zombie's transaction holds the last
stable offset back (app.kafka.probes.standby_ends, used by the highwaters of
app.overrides.consumer).

Without it: a worker that owned a changelog partition a moment ago has committed
records there after a zombie's transaction opened; as a standby of that
partition, its persisted offset is past the last stable offset, and Faust's
consistency check crashes it.
"""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaProducer, TopicPartition

from app.kafka.connection import Connection
from app.kafka.probes import reader, standby_ends

from .harness import create_topic


async def end_offsets(bootstrap: str, tps, isolation: str) -> dict:
    async with reader(Connection(bootstrap_servers=bootstrap), isolation) as consumer:
        return await consumer.end_offsets(tps)


def test_a_zombies_open_transaction_does_not_hide_the_logs_end(bootstrap):
    topic = f"standby-ends-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, partitions=2)
    held, clear = TopicPartition(topic, 0), TopicPartition(topic, 1)

    async def go():
        zombie = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"z-{topic}")
        owner = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"o-{topic}")
        await zombie.start()
        await owner.start()
        try:
            await zombie.begin_transaction()  # opened, never ended (until the timeout)
            await zombie.send_and_wait(topic, b"zombie", partition=0)
            async with owner.transaction():  # the new owner commits after it
                for n in range(3):
                    await owner.send_and_wait(topic, b"owner %d" % n, partition=0)
                await owner.send_and_wait(topic, b"elsewhere", partition=1)
            stable = await end_offsets(bootstrap, [held, clear], "read_committed")
            written = await end_offsets(bootstrap, [held, clear], "read_uncommitted")
            ends = await standby_ends(
                Connection(bootstrap_servers=bootstrap), {held: stable[held], clear: stable[clear]}
            )
            return stable, written, ends
        finally:
            await owner.stop()
            await zombie.stop()  # aborts the zombie's transaction

    stable, written, ends = asyncio.run(go())
    assert stable[held] == 0  # held back at the zombie's first record
    assert written[held] == 5  # the zombie's record, the owner's three, a commit marker
    assert ends[held] == written[held]  # the standby's check sees every record
    assert ends[clear] == stable[clear] == written[clear]  # nothing open: unchanged
