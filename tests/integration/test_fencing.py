"""KIP-447 on the real broker: offsets committed in a transaction carry the group
generation, so a member that lost its partitions cannot commit theirs."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.kafka.kip447 import GroupMetadata
from app.overrides.eos_producer import EosProducer, ZombieFenced
from app.overrides.stable_offsets import fetch_stable_offsets

from .harness import consume_until, create_topic


async def _joined(bootstrap: str, topic: str, group: str) -> tuple[AIOKafkaConsumer, GroupMetadata]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    for _ in range(200):  # poll for the assignment, with a deadline of about 20 s
        if consumer.assignment():
            break
        await consumer.getmany(timeout_ms=100)
    assert consumer.assignment(), "no assignment within 20 s"
    c = consumer._coordinator
    return consumer, GroupMetadata(group, c.generation, c.member_id)


async def _committed(bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    """The group's committed offset once stable (a plain OffsetFetch may answer with
    the offset before a transaction whose markers are still being written)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        return (await fetch_stable_offsets(consumer, [tp]))[tp]
    finally:
        await consumer.stop()


async def _commit_in_transaction(producer, out: str, offsets: dict, group) -> None:
    await producer.begin_transaction()
    await producer.send_and_wait(out, b"written-by-" + str(group).encode()[:40])
    try:
        await producer.send_offsets_to_transaction(offsets, group)
    except BaseException:
        await producer.abort_transaction()
        raise
    await producer.commit_transaction()


@pytest.mark.integration
def test_a_member_that_lost_its_partitions_cannot_commit_their_offsets(bootstrap):
    run = uuid.uuid4().hex[:8]
    topic, out, group = f"fence-in-{run}", f"fence-out-{run}", f"fence-{run}"
    create_topic(bootstrap, topic, partitions=1)
    create_topic(bootstrap, out, partitions=1)
    tp = TopicPartition(topic, 0)

    async def go():
        producer = EosProducer(bootstrap_servers=bootstrap, transactional_id=f"fence-{run}")
        await producer.start()
        try:
            first, first_meta = await _joined(bootstrap, topic, group)
            # the member owning the partition commits: accepted
            await _commit_in_transaction(producer, out, {tp: 5}, first_meta)
            assert await _committed(bootstrap, group, tp) == 5

            await first.stop()  # it leaves; another member takes the partition
            second, second_meta = await _joined(bootstrap, topic, group)
            assert second_meta.generation_id > first_meta.generation_id

            # the first member's generation is over: its offsets are refused, and
            # the transaction they were in is aborted with them
            with pytest.raises(ZombieFenced, match="refused"):
                await _commit_in_transaction(producer, out, {tp: 9}, first_meta)
            assert await _committed(bootstrap, group, tp) == 5
            # the stable read agrees: nothing of the zombie is pending or committed
            assert await fetch_stable_offsets(second, [tp]) == {tp: 5}

            # the current member commits through the same producer
            await _commit_in_transaction(producer, out, {tp: 7}, second_meta)
            assert await _committed(bootstrap, group, tp) == 7
            await second.stop()
        finally:
            await producer.stop()

        # TxnOffsetCommit v0 (what aiokafka sends) carries no generation: the same
        # stale commit goes through there. This is the hole v3 closes.
        plain = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"v0-{run}")
        await plain.start()
        try:
            await _commit_in_transaction(plain, out, {tp: 11}, group)
        finally:
            await plain.stop()
        assert await _committed(bootstrap, group, tp) == 11

    asyncio.run(go())
    written = consume_until(bootstrap, out, lambda rs: len(rs) >= 3, timeout=20)
    # read_committed: the three committed transactions' records, not the aborted one
    assert len(written) == 3, [(r.offset, r.value) for r in written]
