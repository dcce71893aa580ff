"""The engine built whole, with the real processor and state store, around fakes for the
producer, the group's consumer and `fatal` (tests/unit/commitfakes.py). No Kafka."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace

import orjson
import pytest
from aiokafka import TopicPartition

from app.core.merge import Rules
from app.engine.engine import Engine
from app.engine.processor import Destinations, Processor, now_ms
from app.kafka.kip447 import GroupMetadata

from .commitfakes import CHANGELOG, OUTPUT, Data, Exited, Fatal, Log, Producer, state_store, until

RAW, REKEY = "raw", "rekey"
RAW0, REKEY0 = TopicPartition(RAW, 0), TopicPartition(REKEY, 0)
GROUP = GroupMetadata("merger", 3, "member-1")


class Port:
    """The group's consumer, as the engine sees it."""

    def __init__(self, calls: Log) -> None:
        self.calls = calls

    async def commit_offsets(self, offsets: dict) -> bool:
        self.calls.append(("commit_offsets", dict(offsets)))
        return True

    async def end_offsets(self, tps) -> dict:
        return {tp: 0 for tp in tps}

    async def stable_offsets(self, tps) -> dict:
        return {tp: 0 for tp in tps}

    async def high_watermarks(self, tps) -> dict:
        return {tp: 0 for tp in tps}

    async def partition_count(self, topic: str) -> int:
        return 1

    def seconds_since_heartbeat(self) -> float:
        return 0.0


def pair(offset: int, execution_id: str) -> list:
    """A keyed RUNNING and its terminal, back to back: merged at once."""
    return [record(offset, execution_id, "RUNNING"), record(offset + 1, execution_id, "COMPLETED")]


def record(offset: int, execution_id: str, status: str):
    value = orjson.dumps({"execution_id": execution_id, "status": status, "route_id": "r"})
    key = execution_id.encode()
    return SimpleNamespace(
        topic=RAW, partition=0, offset=offset, timestamp=now_ms(), key=key, value=value, headers=[]
    )


class Rig:
    def __init__(self, folder, exactly_once: bool) -> None:
        self.calls = Log()
        self.producer = Producer(self.calls)
        self.data = Data(folder)
        store = state_store(self.data)
        counts: Counter[str] = Counter()
        processor = Processor(
            Rules(), store, Destinations(OUTPUT, "dlq", REKEY, 1, 1, 1), {}, counts
        )
        ready = asyncio.Event()
        ready.set()

        async def first_record_at(tp, offset: int) -> int:
            return offset

        self.engine = Engine(
            processor,
            store,
            counts,
            exactly_once=exactly_once,
            raw_topic=RAW,
            rekey_topic=REKEY,
            raw_partitions=1,
            state_partitions=1,
            new_producer=lambda: self.producer,
            registry_ready=ready,
            first_record_at=first_record_at,
            fatal=Fatal(self.calls),
        )
        self.engine.attach(Port(self.calls))

    def sent(self, topic: str) -> list[bytes]:
        return [key for call in self.calls if call[:2] == ("send", topic) for key in call[3]]


@pytest.fixture(params=[True, False], ids=["exactly_once", "at_least_once"])
def rig(request, tmp_path):
    r = Rig(tmp_path, request.param)
    yield r
    r.data.close()


def test_records_in_one_commit_out_the_revocation_commits_the_rest_and_lets_go(rig):
    e = rig.engine

    async def go():
        await e.start()
        await e.on_assigned({RAW0: 0, REKEY0: 0}, GROUP, epoch=1)
        batch = [record(0, "x1", "RUNNING"), record(1, "x1", "COMPLETED")]
        await e.handle({RAW0: [*batch, record(2, "x2", "RUNNING")]}, epoch=1)
        assert rig.sent(OUTPUT) == []  # nothing leaves before the commit
        await e.commit()
        assert e.committed_offsets == {RAW0: 3, REKEY0: 0}
        await e.handle({RAW0: [record(3, "x2", "FAILED")]}, epoch=1)
        await e.on_revoked({RAW0, REKEY0})
        assert e.assigned == frozenset() and e.positions.group is None
        await e.stop()

    asyncio.run(go())
    assert rig.sent(OUTPUT) == [b"x1", b"x2"]  # both merged, one record each
    assert e.counts["merged"] == 2 and e.counts["commits"] == 2
    # the state: x2 held at the first commit, both terminal markers at the second
    assert rig.sent(CHANGELOG) == [b"ex1", b"ex2", b"ex2"]
    if e.exactly_once:
        offsets = [call[1:] for call in rig.calls if call[0] == "offsets"]
        # every owned partition, with the generation the assignment was made in
        assert offsets == [({RAW0: 3, REKEY0: 0}, GROUP), ({RAW0: 4, REKEY0: 0}, GROUP)]
    else:
        offsets = [call[1] for call in rig.calls if call[0] == "commit_offsets"]
        assert offsets == [{RAW0: 3}, {RAW0: 4}]  # the partitions that moved
    assert rig.calls[-1] == ("stop",)  # nothing left to commit at the stop


def test_the_commit_timer_s_round_trips_overlap_the_next_batch(rig):
    e = rig.engine

    async def go():
        await e.start()
        await e.on_assigned({RAW0: 0, REKEY0: 0}, GROUP, epoch=1)
        await e.handle({RAW0: pair(0, "x1")}, epoch=1)
        rig.producer.hold = True  # the broker is slow to answer
        committing = asyncio.create_task(e.commit())
        await until(lambda: e.checkpoint.in_flight)  # cut, and waiting on the broker
        handling = e.handle({RAW0: pair(2, "x2")}, epoch=1)
        await asyncio.wait_for(handling, timeout=5.0)  # fails if it waits for the commit
        assert not committing.done()  # handled while the commit waits
        assert rig.sent(OUTPUT) == [b"x1"]
        rig.producer.release()
        await committing
        assert e.counts["commits"] == 1
        await e.commit()

    asyncio.run(go())
    assert rig.sent(OUTPUT) == [b"x1", b"x2"]
    assert e.counts["commits"] == 2 and e.committed_offsets[RAW0] == 4


def test_redelivered_records_are_dropped_and_stale_batches_too(rig):
    e = rig.engine

    async def go():
        await e.start()
        await e.on_assigned({RAW0: 0, REKEY0: 0}, GROUP, epoch=2)
        await e.handle({RAW0: pair(0, "x1")}, epoch=1)  # fetched before the seek
        assert e.positions.get(RAW0) == 0
        await e.handle({RAW0: pair(0, "x1")}, epoch=2)
        await e.handle({RAW0: [*pair(0, "x1"), *pair(2, "x2")]}, epoch=2)  # two again
        await e.commit()

    asyncio.run(go())
    assert rig.sent(OUTPUT) == [b"x1", b"x2"]
    assert e.counts["safety_net_redelivered"] == 2 and e.counts["merged"] == 2


def test_a_failing_batch_exits_without_committing(rig):
    e = rig.engine

    def boom(*args):
        raise ValueError("bad state")

    e.processor.handle = boom

    async def go():
        await e.start()
        await e.on_assigned({RAW0: 0, REKEY0: 0}, GROUP, epoch=1)
        await e.handle({RAW0: [record(0, "x1", "COMPLETED")]}, epoch=1)

    with pytest.raises(Exited):
        asyncio.run(go())
    assert rig.calls[-1][1] == "handling raw[0] from 0"
    assert "offsets" not in rig.calls.names() and "commit_offsets" not in rig.calls.names()
