"""Mixed keying on real partitions: one phase of an execution keyed by its
execution_id, the other sent without a key to another partition. Whichever phase
carries the key, the RUNNING's fields reach the one terminal record, also when the
worker is killed between the two phases."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.processes import WorkerProcess

from .harness import (
    consume_until,
    event,
    for_key,
    group_offsets,
    partition_of,
    produce,
    settled,
)

RUNNING = {"route_id": "orders", "agent_id": "a-1", "application": "shop", "start_time": "t0"}


@pytest.fixture(scope="module")
def worker(bootstrap, topics, tmp_path_factory) -> Iterator[WorkerProcess]:
    """This module's own worker: its tests kill it."""
    proc = WorkerProcess(bootstrap, topics, Path(tmp_path_factory.mktemp("state")))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def other_partition(eid: str) -> int:
    return (partition_of(eid) + 1) % 3


def wait_until(worker: WorkerProcess, what: str, check, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = worker.counts()
        if counts and check(counts):
            return counts
        time.sleep(0.1)  # poll the worker's counters
    raise AssertionError(f"{what}: not seen in {timeout:.0f} s: {worker.counts()}")


def send_running(bootstrap: str, topics, eid: str, keyed: bool) -> tuple[int, int]:
    """Returns where it was written: (partition, offset)."""
    value = event(eid, "RUNNING", **RUNNING)
    if keyed:
        [placed] = produce(bootstrap, topics.raw, [(eid.encode(), value)])
    else:
        [placed] = produce(bootstrap, topics.raw, [(None, value)], partition=other_partition(eid))
    return placed


def send_terminal(bootstrap: str, topics, eid: str, keyed: bool) -> None:
    value = event(eid, "COMPLETED", duration_ms=5, output_body="out", route_id=None)
    if keyed:
        produce(bootstrap, topics.raw, [(eid.encode(), value)])
    else:
        produce(bootstrap, topics.raw, [(None, value)], partition=other_partition(eid))


def merged_once(bootstrap: str, topics, eids: list[str]) -> None:
    """Each execution's records once it has one, then everything up to a sentinel on
    every raw partition, read to the end: exactly one record each, the merge."""
    got = consume_until(
        bootstrap, topics.output, lambda rs: all(for_key(rs, e) for e in eids), timeout=90
    )
    assert all(for_key(got, e) for e in eids), "nothing emitted for some of them"
    got = settled(bootstrap, topics, range(3))
    for eid in eids:
        records = for_key(got, eid)
        assert len(records) == 1, [r.json for r in records]
        [out] = records
        assert out.origin == "merged", (out.origin, out.json)
        assert out.json == {
            "execution_id": eid,
            "status": "COMPLETED",
            "duration_ms": 5,
            "output_body": "out",
            **RUNNING,
        }


def test_one_phase_keyed_the_other_not_merges_in_both_orders(bootstrap, topics, worker):
    """The RUNNING unkeyed and the terminal keyed (the terminal is read first: its
    RUNNING takes the re-key topic's detour, and the terminal waits for it), and the
    RUNNING keyed with the terminal unkeyed; each pair back to back."""
    before = wait_until(worker, "counters", lambda c: True)
    unkeyed_running, keyed_running = f"mixed-u-{uuid.uuid4()}", f"mixed-k-{uuid.uuid4()}"
    for eid, running_keyed in ((unkeyed_running, False), (keyed_running, True)):
        send_running(bootstrap, topics, eid, keyed=running_keyed)
        send_terminal(bootstrap, topics, eid, keyed=not running_keyed)
    merged_once(bootstrap, topics, [unkeyed_running, keyed_running])
    after = worker.counts()
    assert after.get("terminal_waiting", 0) >= before.get("terminal_waiting", 0) + 2


def test_one_phase_keyed_the_other_not_merges_across_a_kill(bootstrap, topics, worker):
    """Both orders, the worker killed -9 between the two phases of each."""
    unkeyed_running, keyed_running = f"kill-u-{uuid.uuid4()}", f"kill-k-{uuid.uuid4()}"
    pairs = ((unkeyed_running, False), (keyed_running, True))
    for eid, running_keyed in pairs:
        partition, offset = send_running(bootstrap, topics, eid, keyed=running_keyed)
        # the RUNNING handled (held, or forwarded to the re-key topic) and committed:
        # the group's offset of its raw partition is past it
        deadline = time.monotonic() + 60
        while group_offsets(bootstrap, topics.app_id, topics.raw).get(partition, -1) <= offset:
            assert time.monotonic() < deadline, "the RUNNING was not committed in 60 s"
            time.sleep(0.2)  # poll the group's committed offsets
    worker.kill()
    for eid, running_keyed in pairs:
        send_terminal(bootstrap, topics, eid, keyed=not running_keyed)
    worker.start()
    merged_once(bootstrap, topics, [unkeyed_running, keyed_running])


def test_a_keyed_running_sent_after_its_keyed_terminal_is_late(bootstrap, topics, worker):
    eid = f"late-{uuid.uuid4()}"
    before = wait_until(worker, "counters", lambda c: True)
    done = event(eid, "FAILED", error="boom")
    produce(bootstrap, topics.raw, [(eid.encode(), done)])
    produce(bootstrap, topics.raw, [(eid.encode(), event(eid, "RUNNING", **RUNNING))])
    got = consume_until(bootstrap, topics.output, lambda rs: bool(for_key(rs, eid)), timeout=90)
    [out] = for_key(got, eid)
    assert (out.origin, out.value) == ("terminal-only", done)
    wait_until(
        worker,
        "the late RUNNING dropped",
        lambda c: c.get("running_after_terminal", 0) > before.get("running_after_terminal", 0),
    )
