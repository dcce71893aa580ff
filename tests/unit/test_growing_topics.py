"""A raw topic with more partitions than the held state (docs/growing-topics.md): where
records are handled, which partitions go together, what the worker refuses. No Kafka."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from aiokafka import TopicPartition
from faust.assignor.client_assignment import ClientAssignment
from rocksdict import Options, Rdict

from app.core import merge
from app.core.heldstate import state_key
from app.engine.engine import Engine
from app.engine.processor import Destinations, Processor, now_ms, partition_for
from app.kafka.kip447 import GroupMetadata
from app.ops.topics import state_partition_count
from app.overrides.assignor import colocate_raw
from app.state.statestore import StateStore

STATE = 3  # the held state's partitions (re-key and changelog topics)
RAW, REKEY, CHANGELOG = "raw", "rekey", "held-changelog"


class Sink:
    """An outbox that keeps (topic, partition, key) of what the processor sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, bytes]] = []

    def add(self, topic, partition, key, value, headers=(), timestamp_ms=None) -> None:
        self.sent.append((topic, partition, key))


class Data:
    """One RocksDB per state partition, in `folder`, as Faust's store keeps them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.dbs: dict[int, Rdict] = {}

    def _db_for_partition(self, partition: int) -> Rdict:
        if partition not in self.dbs:
            path = str(self.folder / f"p{partition}")
            self.dbs[partition] = Rdict(path, options=Options(raw_mode=True))
        return self.dbs[partition]


def processor(folder: Path, output_partitions: int = 5) -> Processor:
    table = SimpleNamespace(data=Data(folder), changelog_topic=None)
    to = Destinations("out", "dlq", REKEY, STATE, 3, output_partitions)
    return Processor(merge.Rules(), StateStore(table), to, {}, Counter())


def record(partition: int, eid: str, status: str, offset: int = 0, key: bytes | None = b""):
    value = orjson.dumps({"execution_id": eid, "status": status})
    key = eid.encode() if key == b"" else key
    return SimpleNamespace(
        topic=RAW,
        partition=partition,
        offset=offset,
        timestamp=int(time.time() * 1000),  # new: held, not too old
        key=key,
        value=value,
        headers=(),
    )


def ids_with_state(state: int, n: int = 3) -> list[str]:
    """Execution ids whose state partition is `state`."""
    found = (f"e{i}" for i in range(10_000))
    return [e for e in found if partition_for(e.encode(), STATE) == state][:n]


def test_a_keyed_record_on_a_new_raw_partition_of_its_state_partition_is_handled_there(tmp_path):
    # raw partition 4 of 6 is handled in state partition 4 % 3 = 1, with raw partition 1
    p = processor(tmp_path)
    sink = Sink()
    eid = next(e for e in ids_with_state(1, 50) if partition_for(e.encode(), 6) == 4)
    p.handle(1, [record(4, eid, "RUNNING")], sink)
    assert sink.sent == []  # held, not forwarded
    assert p.store.get(1, state_key(eid)) is not None
    p.handle(1, [record(4, eid, "COMPLETED", 1)], sink)
    # read beyond the state's count: other events of its execution may be on another
    # raw partition, so it waits until the re-key topic is known complete past it
    assert sink.sent == [] and p.counts["terminal_waiting"] == 1
    p.sweep(1, sink, safe_ms=now_ms())
    # the output topic's own partition count (5), not the state's or the raw topic's
    assert sink.sent == [("out", partition_for(eid.encode(), 5), eid.encode())]
    assert p.counts["merged"] == 1 and p.counts["rekeyed"] == 0


def test_a_terminal_on_a_new_raw_partition_waits_for_a_running_still_unread_on_an_old_one(tmp_path):
    # the RUNNING went to raw partition 1 before the growth, the terminal to 4 after;
    # both are handled in state partition 1, in the order they are read
    p = processor(tmp_path)
    sink = Sink()
    eid = next(e for e in ids_with_state(1, 50) if partition_for(e.encode(), 6) == 4)
    p.handle(1, [record(4, eid, "COMPLETED")], sink)
    assert sink.sent == [] and p.counts["terminal_waiting"] == 1  # nothing held: it waits
    p.handle(1, [record(1, eid, "RUNNING", 7)], sink)
    assert sink.sent == [] and p.counts["running_joined"] == 1
    p.sweep(1, sink, safe_ms=now_ms())
    assert sink.sent == [("out", partition_for(eid.encode(), 5), eid.encode())]
    assert p.counts["merged"] == 1


def test_a_keyed_record_whose_state_partition_is_another_travels_through_the_rekey_topic(tmp_path):
    # raw topic grown to 4: raw partition 3 is handled in state partition 0, but holds
    # executions of every state partition
    p = processor(tmp_path)
    sink = Sink()
    eid = ids_with_state(2)[0]
    p.handle(0, [record(3, eid, "COMPLETED")], sink)
    assert sink.sent == [(REKEY, 2, eid.encode())]
    assert p.counts["rekeyed"] == 1 and p.store.get(0, state_key(eid)) is None


def test_an_unkeyed_record_still_travels_and_a_v2_record_never_does(tmp_path):
    p = processor(tmp_path)
    sink = Sink()
    eid = ids_with_state(0)[0]
    p.handle(0, [record(0, eid, "COMPLETED", key=None)], sink)
    assert sink.sent == [(REKEY, 0, eid.encode())]
    sink.sent.clear()
    v2 = ids_with_state(2)[0]
    rec = record(3, v2, "COMPLETED")
    rec.value = orjson.dumps({"execution_id": v2, "status": "COMPLETED", "protocol_version": 2})
    p.handle(0, [rec], sink)  # no state: passed through where it was read
    assert sink.sent == [("out", partition_for(v2.encode(), 5), v2.encode())]


def test_the_state_partition_count_is_the_internal_topics_and_they_must_agree():
    assert state_partition_count(6, None, None) == 6  # a new deployment: the raw topic's
    assert state_partition_count(6, 3, 3) == 3  # the raw topic grew since
    assert state_partition_count(6, 3, None) == 3
    assert state_partition_count(6, None, 3) == 3
    with pytest.raises(RuntimeError, match=r"docs/growing-topics\.md"):
        state_partition_count(6, 3, 6)


def assignment(rekey: list[int], raw: list[int], standby: list[int] = ()) -> ClientAssignment:
    return ClientAssignment(
        actives={REKEY: list(rekey), CHANGELOG: list(rekey), RAW: list(raw)},
        standbys={REKEY: list(standby), CHANGELOG: list(standby), RAW: []},
    )


def test_raw_partitions_follow_their_state_partitions_once_the_raw_topic_has_grown():
    # what Faust gives once the raw topic (6) and the state's topics (3) differ: two
    # unrelated co-partitioned groups
    faust = {"a": assignment([0, 2], [0, 1, 2], [1]), "b": assignment([1], [3, 4, 5], [0, 2])}
    got = colocate_raw(faust, RAW, REKEY, 6, STATE)
    assert got["a"].actives[RAW] == [0, 2, 3, 5] and got["b"].actives[RAW] == [1, 4]
    assert got["a"].standbys[RAW] == [1, 4] and got["b"].standbys[RAW] == [0, 2, 3, 5]
    assert got["a"].actives[REKEY] == [0, 2]  # the state's own assignment is left alone


def test_with_equal_counts_the_assignment_is_faust_s_own():
    faust = {"a": assignment([0, 2], [0, 2], [1]), "b": assignment([1], [1], [0, 2])}
    faust["a"].standbys[RAW] = [1]
    faust["b"].standbys[RAW] = [0, 2]
    got = colocate_raw(faust, RAW, REKEY, 3, STATE)
    assert (got["a"].actives[RAW], got["b"].actives[RAW]) == ([0, 2], [1])
    assert (got["a"].standbys[RAW], got["b"].standbys[RAW]) == ([1], [0, 2])


def engine() -> Engine:
    return Engine(
        None,
        SimpleNamespace(changelog_topic=CHANGELOG),
        Counter(),
        exactly_once=True,
        raw_topic=RAW,
        rekey_topic=REKEY,
        raw_partitions=3,
        state_partitions=STATE,
        new_producer=None,
        registry_ready=asyncio.Event(),
        first_record_at=None,
    )


def tps(**topics: list[int]) -> list[TopicPartition]:
    names = {"raw": RAW, "rekey": REKEY, "changelog": CHANGELOG}
    return [TopicPartition(names[t], p) for t, ps in topics.items() for p in ps]


def test_an_assignment_of_raw_partitions_with_their_state_partitions_is_worked():
    e = engine()
    assert e.layout_problem(tps(raw=[1, 4], rekey=[1], changelog=[1])) is None
    assert e.layout_problem(tps(raw=[0, 3, 2, 5], rekey=[0, 2], changelog=[0, 2])) is None
    assert e.layout_problem(tps(rekey=[2], changelog=[2])) is None  # more state than raw
    assert e.state_partition(TopicPartition(RAW, 5)) == 2
    assert e.state_partition(TopicPartition(REKEY, 2)) == 2


def test_a_raw_partition_without_its_state_partition_is_refused():
    problem = engine().layout_problem(tps(raw=[1, 3], rekey=[1], changelog=[1]))
    assert problem is not None and "raw[3]" in problem and "state partition 0" in problem
    assert "docs/growing-topics.md" in problem
    # a changelog partition without its re-key partition: the same
    problem = engine().layout_problem(tps(raw=[1], rekey=[1], changelog=[1, 0]))
    assert problem is not None and "held-changelog[0]" in problem


def test_grown_internal_topics_are_refused():
    problem = engine().layout_problem(tps(raw=[0], rekey=[0, 3], changelog=[0]))
    assert problem is not None and "rekey has grown" in problem
    problem = engine().layout_problem(tps(raw=[0], rekey=[0], changelog=[0, 4]))
    assert problem is not None and CHANGELOG in problem and "grown" in problem


class Port:
    """The group's consumer as the re-key progress reads it: a raw topic that grew."""

    def __init__(self, raw_count: int) -> None:
        self.raw_count = raw_count
        self.asked: list[list[int]] = []

    async def partition_count(self, topic: str) -> int:
        return self.raw_count

    async def end_offsets(self, tps) -> dict:
        tps = list(tps)
        if tps and tps[0].topic == RAW:
            self.asked.append([tp.partition for tp in tps])
        return {tp: 10 for tp in tps}

    async def stable_offsets(self, tps) -> dict:
        # the new partition 3 has no owner yet: nothing committed there
        return {tp: (10 if tp.partition < 3 else None) for tp in tps}

    async def high_watermarks(self, tps) -> dict:
        return {tp: 10 for tp in tps}


def progress(raw_count: int) -> tuple[Engine, Port, int]:
    e = engine()
    port = Port(raw_count)
    e.attach(port)
    e.positions.assign({TopicPartition(REKEY, 0): 10}, GroupMetadata("merger", 1, "m-1"))
    e.sweeper.consumed({TopicPartition(REKEY, 0): 10})  # this worker has read its re-key partition
    return e, port, asyncio.run(e.sweeper.rekey_progress())


def test_the_rekey_progress_follows_the_raw_topic_s_partitions_as_it_grows():
    e, port, safe = progress(raw_count=3)
    assert port.asked == [[0, 1, 2]] and safe > 0  # every raw record handled: let go
    e, port, safe = progress(raw_count=4)
    assert port.asked == [[0, 1, 2, 3]] and e.sweeper.raw_partitions == 4
    # raw partition 3 is not handled yet: a waiting terminal's RUNNING may be there
    assert safe == -1


class OpenTransactionPort(Port):
    """Re-key partition 0 holds another producer's open transaction at 10: its last stable
    offset stays there, while records committed after it reach 14."""

    async def end_offsets(self, tps) -> dict:
        return {tp: 10 for tp in tps}

    async def high_watermarks(self, tps) -> dict:
        return {tp: 14 for tp in tps}


def test_the_rekey_progress_reads_the_rekey_topic_to_its_high_watermark():
    e = engine()
    e.attach(OpenTransactionPort(raw_count=3))
    e.positions.assign({TopicPartition(REKEY, 0): 10}, GroupMetadata("merger", 1, "m-1"))
    e.sweeper.consumed({TopicPartition(REKEY, 0): 10})  # read up to the open transaction
    assert asyncio.run(e.sweeper.rekey_progress()) == -1  # a RUNNING may be behind it
    e.sweeper.consumed({TopicPartition(REKEY, 0): 14})  # the transaction ended; read past it
    assert asyncio.run(e.sweeper.rekey_progress()) > 0
