"""Partitions added to the raw topic while two workers run and executions are in flight
(docs/growing-topics.md): every execution still comes out merged, exactly once.

The held state keeps its partition count (the re-key and changelog topics'); raw
partition p is assigned with state partition p % that count, and a keyed record
whose execution belongs to another state partition travels through the re-key
topic. The group's leader sees the new partitions at its next metadata refresh
(30 s at most) and the rebalance assigns them.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.processes import Topics, WorkerProcess

from .harness import (
    consume_until,
    create_topic,
    event,
    grow_topic,
    partition_of,
    produce,
    read_to_end,
)

# the leader's metadata refresh (app.worker.METADATA_MAX_AGE_MS), a rebalance, and the
# terminals' merge: well under CAMELEER_STALE_AFTER (300 s), so no RUNNING is flushed
MERGED_WITHIN = 120.0


@pytest.fixture
def deployment(bootstrap, tmp_path) -> Iterator[tuple[Topics, list[WorkerProcess]]]:
    """Fresh topics (raw: 3 partitions) and two workers in one group."""
    topics = Topics.fresh(uuid.uuid4().hex[:8])
    create_topic(bootstrap, topics.raw, partitions=3)
    workers = [WorkerProcess(bootstrap, topics, Path(tmp_path) / f"w{i}") for i in range(2)]
    try:
        for w in workers:
            w.start()
        yield topics, workers
    finally:
        for w in workers:
            w.stop()


def total(workers: list[WorkerProcess], name: str) -> int:
    return sum(w.counts().get(name, 0) for w in workers)


def wait_for_total(workers, name: str, at_least: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if total(workers, name) >= at_least:
            return
        time.sleep(0.2)  # poll the workers' counts
    raise AssertionError(f"{name} never reached {at_least}: {[w.counts() for w in workers]}")


def running(eid: str, n: int) -> bytes:
    return event(eid, "RUNNING", route_id=f"route-{n % 7}", start_time=f"t{n}", agent_id="a-1")


def terminal(eid: str, n: int) -> bytes:
    status = "FAILED" if n % 5 == 0 else "COMPLETED"
    return event(eid, status, duration_ms=n, route_id=None, output_body=f"out-{n}")


def assert_merged_exactly_once(bootstrap: str, topics: Topics, ids: list[str]) -> list:
    """Every execution's one record is its merge; read up to the output's end offsets."""
    want = set(ids)
    got = consume_until(
        bootstrap,
        topics.output,
        lambda rs: {r.key.decode() for r in rs if r.origin == "merged"} >= want,
        timeout=MERGED_WITHIN,
    )
    merged = {r.key.decode() for r in got if r.origin == "merged"}
    assert merged >= want, f"{len(want - merged)} of {len(want)} not merged"
    records = read_to_end(bootstrap, topics.output)
    per_execution = defaultdict(list)
    for r in records:
        per_execution[r.key.decode()].append(r)
    assert set(per_execution) == want  # nothing else came out
    for n, eid in enumerate(ids):
        [out] = per_execution[eid]  # exactly once: no second terminal, no stale RUNNING
        assert out.origin == "merged"
        value = out.json
        # the RUNNING's fields survived (the terminal sends route_id as null)
        assert value["route_id"] == f"route-{n % 7}" and value["start_time"] == f"t{n}"
        assert value["duration_ms"] == n and value["output_body"] == f"out-{n}"
        # the output topic's own partitioning (it was not grown)
        assert out.partition == partition_of(eid, 3)
    assert read_to_end(bootstrap, topics.dlq) == []
    return records


@pytest.mark.long  # past make test's budget: make test-long
def test_raw_topic_grown_from_3_to_6_with_executions_in_flight(bootstrap, deployment):
    topics, workers = deployment
    run = uuid.uuid4().hex[:6]
    held = [f"held-{run}-{n}" for n in range(300)]
    produce(bootstrap, topics.raw, [(e.encode(), running(e, n)) for n, e in enumerate(held)])
    wait_for_total(workers, "running_held", 300)  # every RUNNING held, by both workers

    grow_topic(bootstrap, topics.raw, 6)
    # the agents' producer has refreshed its metadata: it spreads keys over 6 partitions
    placed = produce(
        bootstrap, topics.raw, [(e.encode(), terminal(e, n)) for n, e in enumerate(held)]
    )
    on_new = sum(1 for partition, _ in placed if partition >= 3)
    assert 100 < on_new < 200, on_new  # about half hash to the new partitions 3 to 5
    # executions begun after the growth: both phases on the 6 partitions
    late = [f"late-{run}-{n}" for n in range(300, 360)]
    produce(bootstrap, topics.raw, [(e.encode(), running(e, n)) for n, e in enumerate(late, 300)])
    produce(bootstrap, topics.raw, [(e.encode(), terminal(e, n)) for n, e in enumerate(late, 300)])

    assert_merged_exactly_once(bootstrap, topics, held + late)
    assert all(w.alive for w in workers)
    # 6 is a multiple of 3: raw partition p holds only state partition p % 3's
    # executions, so no keyed record had to travel through the re-key topic
    assert total(workers, "rekeyed") == 0
    # and both workers took part: each merged some of them
    merged = [w.counts().get("merged", 0) for w in workers]
    assert sum(merged) == 360 and min(merged) > 0, merged


@pytest.mark.long  # past make test's budget: make test-long
def test_raw_topic_grown_from_3_to_4_moves_records_through_the_rekey_topic(bootstrap, deployment):
    topics, workers = deployment
    run = uuid.uuid4().hex[:6]
    held = [f"held-{run}-{n}" for n in range(200)]
    produce(bootstrap, topics.raw, [(e.encode(), running(e, n)) for n, e in enumerate(held)])
    wait_for_total(workers, "running_held", 200)
    # RUNNINGs still unread when the topic grows: their terminals may come first
    unread = [f"unread-{run}-{n}" for n in range(200, 300)]
    produce(bootstrap, topics.raw, [(e.encode(), running(e, n)) for n, e in enumerate(unread, 200)])

    grow_topic(bootstrap, topics.raw, 4)
    ids = held + unread
    placed = produce(
        bootstrap, topics.raw, [(e.encode(), terminal(e, n)) for n, e in enumerate(ids)]
    )
    # a terminal on raw partition p is merged in state partition hash % 3; when that
    # is not p % 3, it travels through the re-key topic to where its RUNNING is held
    travelling = [
        eid
        for eid, (partition, _) in zip(ids, placed, strict=True)
        if partition_of(eid, 3) != partition % 3
    ]
    assert len(travelling) > 50, len(travelling)

    assert_merged_exactly_once(bootstrap, topics, ids)
    assert all(w.alive for w in workers)
    assert total(workers, "rekeyed") == len(travelling)


def wait_for_exit(worker: WorkerProcess, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not worker.alive:
            return worker.process.returncode
        time.sleep(0.2)  # poll the process
    raise AssertionError(f"worker still running after {timeout:.0f} s:\n{worker.log_tail()}")


@pytest.mark.long  # past make test's budget: make test-long
def test_a_grown_internal_topic_stops_the_worker_and_is_refused_at_start(bootstrap, tmp_path):
    topics = Topics.fresh(uuid.uuid4().hex[:8])
    create_topic(bootstrap, topics.raw, partitions=3)
    worker = WorkerProcess(bootstrap, topics, Path(tmp_path) / "w")
    worker.start()
    try:
        eid = f"before-{uuid.uuid4()}"  # positive control: the worker merges
        produce(bootstrap, topics.raw, [(eid.encode(), running(eid, 0))])
        produce(bootstrap, topics.raw, [(eid.encode(), terminal(eid, 0))])
        got = consume_until(bootstrap, topics.output, lambda rs: bool(rs), timeout=60)
        assert [r.origin for r in got] == ["merged"]

        grow_topic(bootstrap, f"{topics.app_id}-rekey", 6)
        # the leader's next metadata refresh (30 s) starts a rebalance that assigns a
        # re-key partition past the state's 3: the worker stops before handling it
        assert wait_for_exit(worker, 90) == 70
        reason = worker.exit_reason()
        assert "has grown past the held state's 3 partitions" in reason, reason
        assert "docs/growing-topics.md" in reason

        worker.start(wait=False)  # restarted by its orchestrator: refused at start
        assert wait_for_exit(worker, 60) == 1
        line = worker.log_tail(1)
        assert "re-key topic has 6 partitions and the changelog topic 3" in line, line
        # nothing came out but the merge of before the growth
        assert [r.key for r in read_to_end(bootstrap, topics.output)] == [eid.encode()]
    finally:
        worker.stop()


@pytest.mark.long  # past make test's budget: make test-long
def test_raw_topic_grown_while_the_workers_are_down_with_a_backlog_on_every_partition(
    bootstrap, tmp_path
):
    # The workers come back to RUNNINGs unread on the old partitions and terminals on
    # the new ones, read side by side: a terminal may be handled before its RUNNING.
    topics = Topics.fresh(uuid.uuid4().hex[:8])
    create_topic(bootstrap, topics.raw, partitions=3)
    workers = [WorkerProcess(bootstrap, topics, Path(tmp_path) / f"w{i}") for i in range(2)]
    try:
        for w in workers:
            w.start()
        for w in workers:
            assert w.stop() == 0
        run = uuid.uuid4().hex[:6]
        ids = [f"backlog-{run}-{n}" for n in range(300)]
        produce(bootstrap, topics.raw, [(e.encode(), running(e, n)) for n, e in enumerate(ids)])
        grow_topic(bootstrap, topics.raw, 6)
        placed = produce(
            bootstrap, topics.raw, [(e.encode(), terminal(e, n)) for n, e in enumerate(ids)]
        )
        assert 100 < sum(1 for partition, _ in placed if partition >= 3) < 200
        for w in workers:
            w.start()
        assert_merged_exactly_once(bootstrap, topics, ids)
        assert total(workers, "rekeyed") == 0
    finally:
        for w in workers:
            w.stop()
