"""One commit's steps, in order, under both guarantees (app.engine.checkpoint). No Kafka:
the producer and the group's consumer are fakes recording their calls; the state store
is the real one on a real RocksDB."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from app.engine import checkpoint as checkpoint_module
from app.kafka.kip447 import GroupMetadata

from .commitfakes import CHANGELOG, OFFSET_KEY, OUTPUT, Exited, World

RAW0 = TopicPartition("raw", 0)
GROUP = GroupMetadata("merger", 4, "member-1")


@pytest.fixture(params=[True, False], ids=["exactly_once", "at_least_once"])
def world(request, tmp_path):
    w = World(tmp_path, exactly_once=request.param)
    yield w
    w.data.close()


def eos(tmp_path, **kw) -> World:
    return World(tmp_path, exactly_once=True, **kw)


def alo(tmp_path, **kw) -> World:
    return World(tmp_path, exactly_once=False, **kw)


def sent(calls, topic: str) -> list[bytes]:
    return [key for call in calls if call[:2] == ("send", topic) for key in call[3]]


async def one_commit(w: World) -> None:
    """Record a handled, then committed."""
    await w.checkpoint.start()
    w.handled(b"a")
    await w.checkpoint.commit({RAW0: 1}, GROUP)


def transactions(calls) -> list[list]:
    """The calls of each transaction: from a begin to its commit."""
    out, current = [], None
    for call in calls:
        if call[0] == "begin":
            current = []
        elif call[0] == "commit":
            out.append(current)
            current = None
        elif current is not None:
            current.append(call)
    return out


def test_exactly_once_seals_sends_and_commits_the_transaction_then_writes_rocksdb(tmp_path):
    w = eos(tmp_path)

    async def go():
        await w.checkpoint.start()
        w.handled(b"a", b"b", b"c")  # one full batch of two, one open
        w.published.append(1_234)
        w.counts["merged"] = 3
        await w.checkpoint.commit({RAW0: 3}, GROUP)

    asyncio.run(go())
    assert w.calls.names() == [
        "start",
        "begin",
        "member",
        # 1.-3. sealed; the changelog records and every output batch to the producer
        *["send"] * 4,
        # 4. every record delivered
        *["acked"] * 4,
        # 5. the offsets, with the group's generation
        "offsets",
        # 6., 7.
        "commit",
        "begin",
        # 9.
        "watch",
    ]
    assert sent(w.calls, OUTPUT) == [b"a", b"b", b"c"]
    assert sent(w.calls, CHANGELOG) == [b"ea", b"eb", b"ec"]
    assert ("offsets", {RAW0: 3}, GROUP) in w.calls
    # 8. RocksDB, with the offset of the last changelog record (0, 1, 2)
    assert w.db().get(b"ea") == b"marker-a" and w.db().get(OFFSET_KEY) == b"2"
    assert w.calls[-1] == ("watch", {RAW0: 3}, {"merged": 3}, [1_234])
    assert w.counts["commits"] == 1 and not w.checkpoint.in_flight


def test_at_least_once_delivers_the_outputs_then_the_changelog_then_commits_offsets(tmp_path):
    w = alo(tmp_path)

    asyncio.run(one_commit(w))
    assert w.calls.names() == [
        "start",
        "member",  # before anything is produced
        "send",  # 3. the outputs
        "acked",  # 4. delivered
        "member",  # 5.
        "send",  # 6. the changelog, delivered
        "acked",
        "commit_offsets",  # 7.
        "watch",  # 9.
    ]
    assert w.calls[2][1] == OUTPUT and w.calls[5][1] == CHANGELOG
    assert w.calls[7] == ("commit_offsets", {RAW0: 1})
    assert w.db().get(b"ea") == b"marker-a" and w.db().get(OFFSET_KEY) == b"0"


def test_refused_offsets_leave_rocksdb_at_its_changelog_offset(tmp_path):
    w = alo(tmp_path, accept=False)
    w.db()[OFFSET_KEY] = b"7"  # where a restore would start reading the changelog

    asyncio.run(one_commit(w))
    assert ("commit_offsets", {RAW0: 1}) in w.calls
    # the state is written (its outputs went out); the changelog offset is not moved
    # past records another owner may have written meanwhile
    assert w.db().get(b"ea") == b"marker-a"
    assert w.db().get(OFFSET_KEY) == b"7"
    assert w.counts["commits"] == 1


@pytest.mark.parametrize("name", ["ProducerFenced", "ZombieFenced", "InvalidProducerEpoch"])
def test_a_fenced_transaction_exits_without_writing_rocksdb(tmp_path, name):
    w = eos(tmp_path)
    error = type(name, (Exception,), {})("the generation is over")
    w.producer.fail_commit = error

    with pytest.raises(Exited):
        asyncio.run(one_commit(w))
    assert ("watch_failed",) in w.calls
    assert w.calls[-1] == ("fatal", "fenced: this worker no longer owns its partitions", error)
    assert w.db().get(b"ea") is None  # RocksDB holds only what Kafka committed
    assert w.counts["commits"] == 0


def test_any_other_failure_of_the_transaction_exits_too(tmp_path):
    w = eos(tmp_path)
    w.producer.fail_commit = RuntimeError("broker gone")

    with pytest.raises(Exited):
        asyncio.run(one_commit(w))
    assert w.calls[-1][:2] == (
        "fatal",
        "commit failed: a record or the transaction was not written",
    )
    assert w.db().get(b"ea") is None


def test_a_worker_no_longer_a_member_produces_nothing(tmp_path):
    w = alo(tmp_path, member=False)

    with pytest.raises(Exited):
        asyncio.run(one_commit(w))
    assert "send" not in w.calls.names() and "commit_offsets" not in w.calls.names()


def test_records_handled_while_a_commit_is_in_flight_go_to_the_next_one(world):
    w, cp = world, world.checkpoint

    async def go():
        await cp.start()
        w.handled(b"a")
        first = await cp.cut({RAW0: 1}, GROUP, handled=True)
        assert cp.in_flight
        # handled while the broker works on the first commit: a full batch, one open
        w.handled(b"b", b"c", b"d")
        assert w.store.get(0, b"eb") == b"marker-b"  # reads see every write before them
        await cp.send_full()  # the full batch waits for the next commit
        assert sent(w.calls, OUTPUT) == [b"a"]
        await cp.finish(first)
        assert not cp.in_flight
        assert w.db().get(b"ea") == b"marker-a" and w.db().get(b"eb") is None
        await cp.commit({RAW0: 4}, GROUP)

    asyncio.run(go())
    assert sent(w.calls, OUTPUT) == [b"a", b"b", b"c", b"d"]
    assert sent(w.calls, CHANGELOG) == [b"ea", b"eb", b"ec", b"ed"]
    watched = [call[1] for call in w.calls if call[0] == "watch"]
    assert watched == [{RAW0: 1}, {RAW0: 4}]
    if cp.exactly_once:
        first_txn, second_txn = transactions(w.calls)
        assert sent(first_txn, OUTPUT) == [b"a"] and sent(first_txn, CHANGELOG) == [b"ea"]
        assert sent(second_txn, OUTPUT) == [b"b", b"c", b"d"]
        assert ("offsets", {RAW0: 4}, GROUP) in second_txn
    assert w.db().get(b"ed") == b"marker-d" and w.counts["commits"] == 2


def test_handling_waits_for_the_commit_once_the_queued_batches_are_too_large(world, monkeypatch):
    monkeypatch.setattr(checkpoint_module, "QUEUED_BYTES_MAX", 150)  # one full batch: 200
    w, cp = world, world.checkpoint

    async def go():
        await cp.start()
        w.handled(b"a")
        first = await cp.cut({RAW0: 1}, GROUP, handled=True)
        w.handled(b"b", b"c", b"d")
        waiting = asyncio.create_task(cp.send_full())
        await cp.finish(first)
        await waiting

    asyncio.run(go())
    names = w.calls.names()
    queued = names.index("send", names.index("watch"))  # the full batch, after the commit
    assert w.calls[queued] == ("send", OUTPUT, 0, (b"b", b"c"))
    assert "handle_wait_commit" in w.seconds


def test_nothing_handled_nothing_committed(world):
    async def go():
        await world.checkpoint.start()
        return await world.checkpoint.cut({RAW0: 5}, GROUP, handled=False)

    assert asyncio.run(go()) is None
    assert world.calls.names() in (["start", "begin"], ["start"])


def test_the_last_commit_begins_no_transaction(tmp_path):
    w = eos(tmp_path)

    async def go():
        await w.checkpoint.start()
        w.handled(b"a")
        cut = await w.checkpoint.cut({RAW0: 1}, GROUP, handled=True, begin_next=False)
        await w.checkpoint.finish(cut)
        await w.checkpoint.stop()

    asyncio.run(go())
    assert w.calls.names()[-4:] == ["offsets", "commit", "watch", "stop"]
