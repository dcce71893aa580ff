"""Unkeyed pairs on real partitions: both phases of an execution sent with no key land
on two raw partitions and reach the execution's partition through the re-key topic,
in either order; the RUNNING's fields are never lost to a terminal-only record."""

from __future__ import annotations

import asyncio
import time
import uuid

from aiokafka import AIOKafkaProducer

from .harness import (
    consume_until,
    event,
    for_key,
    group_offsets,
    partition_of,
    produce,
    settled,
    wait_for,
)

GRACE = 60.0  # CAMELEER_REKEY_GRACE's default: the tests must finish well before it


def others(eid: str, partitions: int = 3) -> list[int]:
    """Raw partitions other than the execution's own: both records travel."""
    own = partition_of(eid, partitions)
    return [p for p in range(partitions) if p != own]


def all_of(bootstrap, topics, eid: str):
    """Every output record of eid once one is out: read to the end offsets, past a
    sentinel on each raw partition (the pair crossed them all)."""
    got = consume_until(bootstrap, topics.output, lambda rs: bool(for_key(rs, eid)), timeout=30)
    assert for_key(got, eid), f"no output for {eid}"
    return for_key(settled(bootstrap, topics, range(3)), eid)


def wait_for_count(worker, name: str, at_least: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.counts().get(name, 0) >= at_least:
            return
        time.sleep(0.2)  # poll the worker's counts
    raise AssertionError(f"{name} never reached {at_least}: {worker.counts()}")


def test_terminal_first_waits_for_its_running_and_merges(bootstrap, topics, worker):
    eid = f"pair-{uuid.uuid4()}"
    a, b = others(eid)
    waiting = worker.counts().get("terminal_waiting", 0)
    # the terminal first, unkeyed, on one partition...
    produce(
        bootstrap,
        topics.raw,
        [(None, event(eid, "FAILED", duration_ms=9, output_body=None))],
        partition=b,
    )
    wait_for_count(worker, "terminal_waiting", waiting + 1)  # it found nothing held
    # ...then its RUNNING, unkeyed, on another: it arrives second
    produce(
        bootstrap,
        topics.raw,
        [(None, event(eid, "RUNNING", route_id="orders", agent_id="a-1", start_time="t0"))],
        partition=a,
    )
    [out] = all_of(bootstrap, topics, eid)
    assert out.origin == "merged"
    assert out.json == {
        "execution_id": eid,
        "status": "FAILED",
        "duration_ms": 9,
        "output_body": None,
        "route_id": "orders",
        "agent_id": "a-1",
        "start_time": "t0",
    }


def test_running_first_merges_as_always(bootstrap, topics, worker):
    eid = f"pair-{uuid.uuid4()}"
    a, b = others(eid)
    produce(bootstrap, topics.raw, [(None, event(eid, "RUNNING", route_id="r2"))], partition=a)
    produce(bootstrap, topics.raw, [(None, event(eid, "COMPLETED", duration_ms=1))], partition=b)
    [out] = all_of(bootstrap, topics, eid)
    assert out.origin == "merged" and out.json["route_id"] == "r2"


def test_a_lone_rekeyed_terminal_goes_out_once_the_rekey_topic_is_known_complete(
    bootstrap, topics, worker
):
    eid = f"lone-{uuid.uuid4()}"
    sent = time.monotonic()
    produce(bootstrap, topics.raw, [(None, event(eid, "COMPLETED", duration_ms=2))])
    got = consume_until(bootstrap, topics.output, lambda rs: bool(for_key(rs, eid)), timeout=GRACE)
    [out] = for_key(got, eid)
    assert out.origin == "terminal-only"
    # let go by the re-key progress (a few sweep rounds), not by the 60 s grace
    assert time.monotonic() - sent < GRACE / 2
    # and nothing came after it
    assert for_key(settled(bootstrap, topics, range(3)), eid) == [out]


class OpenTransaction:
    """A transaction left open on one partition, as a worker killed mid-commit leaves it:
    the partition's last stable offset stays at its first record until it ends."""

    def __init__(self, bootstrap: str, topic: str, partition: int) -> None:
        self.loop = asyncio.new_event_loop()  # the producer's, from begin to abort

        async def begin():
            self.producer = AIOKafkaProducer(
                bootstrap_servers=bootstrap, transactional_id=f"open-{uuid.uuid4()}"
            )
            await self.producer.start()
            await self.producer.begin_transaction()
            await self.producer.send_and_wait(
                topic, event(f"open-{uuid.uuid4()}", "RUNNING"), partition=partition
            )

        self.loop.run_until_complete(begin())

    def abort(self) -> None:
        async def end():
            try:
                await self.producer.abort_transaction()
            finally:
                await self.producer.stop()

        try:
            self.loop.run_until_complete(end())
        finally:
            self.loop.close()


def test_a_waiting_terminal_waits_for_a_running_behind_an_open_transaction(
    bootstrap, topics, worker
):
    """The RUNNING (unkeyed) is handled and re-keyed to the execution's partition, its
    offset committed, but another producer's transaction open there since before holds
    the re-key partition's last stable offset back: the RUNNING is committed and not yet
    readable. The keyed terminal that follows waits for it, and merges once the open
    transaction ends, however long the committed offsets have been past the RUNNING."""
    eid = f"behind-{uuid.uuid4()}"
    own = partition_of(eid)
    a = others(eid)[0]
    opened = OpenTransaction(bootstrap, f"{topics.app_id}-rekey", own)
    try:
        [(_, at)] = produce(
            bootstrap,
            topics.raw,
            [(None, event(eid, "RUNNING", route_id="behind", agent_id="a-2"))],
            partition=a,
        )
        wait_for(
            "the RUNNING handled and its offset committed",
            lambda: group_offsets(bootstrap, topics.app_id, topics.raw).get(a, 0) > at,
        )
        counts = worker.counts()
        produce(bootstrap, topics.raw, [(eid.encode(), event(eid, "COMPLETED", duration_ms=4))])
        wait_for_count(worker, "terminal_waiting", counts.get("terminal_waiting", 0) + 1)
        # rounds of the re-key progress while the transaction is open: each one finds
        # every raw partition committed past its end
        wait_for_count(worker, "sweep_rounds", worker.counts().get("sweep_rounds", 0) + 5)
    finally:
        opened.abort()
    [out] = all_of(bootstrap, topics, eid)
    assert out.origin == "merged", out.json
    assert out.json["route_id"] == "behind" and out.json["duration_ms"] == 4
