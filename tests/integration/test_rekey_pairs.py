"""Unkeyed pairs on real partitions: both phases of an execution sent with no key land
on two raw partitions and reach the execution's partition through the re-key topic,
in either order; the RUNNING's fields are never lost to a terminal-only record."""

from __future__ import annotations

import time
import uuid

from .harness import consume_until, event, for_key, partition_of, produce, settled

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
