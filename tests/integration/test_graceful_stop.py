"""SIGTERM: the worker finishes what is in flight, commits and exits within 10 s."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import defaultdict

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from chaos.processes import Topics, WorkerProcess

from .harness import (
    consume_until,
    create_topic,
    event,
    group_offsets,
    partition_of,
    read_to_end,
    settled,
    wait_for,
)

# A backlog of some seconds: the worker handles ~20,000 records/s, and /stats is polled
# every 50 ms, so SIGTERM comes while most of it is still to be read.
EXECUTIONS = 10_000


async def produce(bootstrap: str, topic: str, records, fed_by=None, stopping=None) -> None:
    """In 40 chunks. With `fed_by` (a worker), each chunk waits until the worker has
    handled half of what came before, until `stopping` is set: the worker is still being
    fed when SIGTERM comes, whatever its speed."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    chunk = max(1, len(records) // 40)
    try:
        for i in range(0, len(records), chunk):
            if fed_by is not None:
                deadline = time.monotonic() + 60
                while not stopping.is_set() and handled(fed_by) < i // 2:
                    assert time.monotonic() < deadline, "the worker stopped handling"
                    await asyncio.sleep(0.05)  # the poll interval
            for key, value in records[i : i + chunk]:
                await producer.send(topic, value, key=key)
            await producer.flush()
    finally:
        await producer.stop()


def handled(worker: WorkerProcess) -> int:
    counts = worker.counts()
    return counts.get("running_held", 0) + counts.get("merged", 0)


def test_sigterm_mid_stream_loses_and_doubles_nothing(bootstrap, topics, worker, tmp_path):
    run = uuid.uuid4().hex[:8]
    ids = [f"g-{run}-{i}" for i in range(EXECUTIONS)]
    records = []
    for i, eid in enumerate(ids):
        records.append((eid.encode(), event(eid, "RUNNING", route_id="r", n=i)))
        records.append((eid.encode(), event(eid, "COMPLETED", duration_ms=i)))
    stopping = threading.Event()
    agents = threading.Thread(
        target=lambda: asyncio.run(produce(bootstrap, topics.raw, records, worker, stopping))
    )
    agents.start()
    try:
        # SIGTERM once the worker is well into the stream, while it is still fed
        deadline = time.monotonic() + 60
        while handled(worker) < len(records) // 50:
            assert time.monotonic() < deadline, "the worker did not start on the stream"
            time.sleep(0.05)  # the poll interval
        at_sigterm = handled(worker)
        still_fed = agents.is_alive()
        stopping.set()  # the rest goes to the successor
        started = time.monotonic()
        code = worker.stop(timeout=30)
        took = time.monotonic() - started
    finally:
        stopping.set()
        agents.join()
    assert still_fed and at_sigterm < len(records), "SIGTERM came after the stream: not mid-stream"
    assert code == 0, worker.log_tail()
    assert took < 10, f"SIGTERM took {took:.1f}s"
    # a new worker (same group, same state folder) takes over
    successor = WorkerProcess(bootstrap, topics, worker.state_dir)
    successor.start()
    try:
        wanted = {eid.encode() for eid in ids}
        consume_until(
            bootstrap, topics.output, lambda rs: wanted <= {r.key for r in rs}, timeout=120
        )
        # and whatever else it would write for them is out too: read to the end offsets
        records = settled(bootstrap, topics, range(3))
        by_key = defaultdict(list)
        for r in records:
            if r.key in wanted:
                by_key[r.key].append(r)
        lost = wanted - by_key.keys()
        doubled = [k for k, rs in by_key.items() if len(rs) > 1]
        wrong = [k for k, rs in by_key.items() if rs[0].json.get("route_id") != "r"]
        assert (len(lost), len(doubled), len(wrong)) == (0, 0, 0), (lost, doubled, wrong)
    finally:
        successor.stop()


def raw_ends(bootstrap: str, topic: str) -> dict[int, int]:
    async def go():
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        await consumer.start()
        try:
            parts = [TopicPartition(topic, p) for p in range(3)]
            return {tp.partition: end for tp, end in (await consumer.end_offsets(parts)).items()}
        finally:
            await consumer.stop()

    return asyncio.run(go())


def test_sigterm_commits_what_was_handled_and_nothing_is_delivered_twice(bootstrap, tmp_path):
    """The worker commits only every 10 minutes here, so everything it handles before
    SIGTERM is still in its open transaction: only the graceful stop can commit it.
    After the stop the merged records are readable (read_committed) and the group's
    offsets cover their raw records; a new worker of the same group emits none again."""
    names = Topics.fresh(f"term-{uuid.uuid4().hex[:8]}")
    create_topic(bootstrap, names.raw, partitions=3)
    env = {"CAMELEER_COMMIT_INTERVAL": "600"}
    first = WorkerProcess(bootstrap, names, tmp_path / "first", extra_env=env)
    first.start()
    ids = [f"t-{i}-{uuid.uuid4()}" for i in range(30)]
    try:
        assert {partition_of(eid) for eid in ids} == {0, 1, 2}
        records = []
        for eid in ids:
            records.append((eid.encode(), event(eid, "RUNNING", route_id="r")))
            records.append((eid.encode(), event(eid, "COMPLETED", duration_ms=1)))
        asyncio.run(produce(bootstrap, names.raw, records))
        wait_for("the worker to merge them all", lambda: first.counts().get("merged", 0) >= 30)
        # handled, and not committed yet: nothing readable
        assert not [r for r in read_to_end(bootstrap, names.output) if r.key.decode() in ids]
        code = first.stop(timeout=30)
        assert code == 0, first.log_tail()
    finally:
        first.kill()
    # committed by the stop: every merged record readable, once, and the raw offsets
    # committed to the end (nothing left to deliver again)
    wanted = {eid.encode() for eid in ids}
    after_stop = [r for r in read_to_end(bootstrap, names.output) if r.key in wanted]
    assert sorted(r.key for r in after_stop) == sorted(wanted)
    assert {r.origin for r in after_stop} == {"merged"}
    assert group_offsets(bootstrap, names.app_id, names.raw) == raw_ends(bootstrap, names.raw)
    # a new worker of the same group (its own state folder) emits nothing of them again
    second = WorkerProcess(bootstrap, names, tmp_path / "second")
    second.start()
    try:
        later = [r for r in settled(bootstrap, names, range(3)) if r.key in wanted]
        assert sorted(r.key for r in later) == sorted(wanted)
        assert second.counts().get("merged", 0) == 0
    finally:
        second.stop()
