"""SIGTERM: the worker finishes what is in flight, commits and exits within 10 s."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict

from aiokafka import AIOKafkaProducer

from chaos.processes import WorkerProcess

from .harness import barrier, consume_until, event

# A backlog of some seconds: the worker handles ~20,000 records/s, and /stats is polled
# every 50 ms, so SIGTERM comes while most of it is still to be read.
EXECUTIONS = 10_000


async def produce_all(bootstrap: str, topic: str, records) -> None:
    """All at once (one flush), so the worker has a backlog to be in the middle of."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for key, value in records:
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
    asyncio.run(produce_all(bootstrap, topics.raw, records))
    # SIGTERM once the worker is well into the backlog, and before it is through
    deadline = time.monotonic() + 60
    while handled(worker) < len(records) // 50:
        assert time.monotonic() < deadline, "the worker did not start on the backlog"
        time.sleep(0.05)  # the poll interval
    at_sigterm = handled(worker)
    started = time.monotonic()
    code = worker.stop(timeout=30)
    took = time.monotonic() - started
    assert at_sigterm < len(records), "the backlog was gone before SIGTERM: not mid-stream"
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
        for partition in range(3):  # and whatever else it would write for them is out too
            barrier(bootstrap, topics, partition)
        records = consume_until(bootstrap, topics.output, lambda rs: True, timeout=5)
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
