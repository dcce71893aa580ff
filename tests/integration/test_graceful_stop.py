"""SIGTERM: the worker finishes what is in flight, commits and exits within 10 s."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import defaultdict

from aiokafka import AIOKafkaProducer

from chaos.processes import WorkerProcess

from .harness import barrier, consume_until, event

EXECUTIONS = 600


def test_sigterm_mid_stream_loses_and_doubles_nothing(bootstrap, topics, worker, tmp_path):
    run = uuid.uuid4().hex[:8]
    ids = [f"g-{run}-{i}" for i in range(EXECUTIONS)]
    half_sent = threading.Event()

    async def agent():
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
        await producer.start()
        try:
            for i, eid in enumerate(ids):
                await producer.send(
                    topics.raw, event(eid, "RUNNING", route_id="r", n=i), key=eid.encode()
                )
                await producer.send(
                    topics.raw, event(eid, "COMPLETED", duration_ms=i), key=eid.encode()
                )
                if i % 50 == 49:
                    await producer.flush()  # paced: the worker is busy when SIGTERM comes
                    await asyncio.sleep(0.02)  # load shape (agent pacing), not a wait
                if i == EXECUTIONS // 2:
                    half_sent.set()
            await producer.flush()
        finally:
            await producer.stop()

    sender = threading.Thread(target=lambda: asyncio.run(agent()))
    sender.start()
    assert half_sent.wait(60)
    started = time.monotonic()
    code = worker.stop(timeout=30)
    took = time.monotonic() - started
    assert code == 0, worker.log_tail()
    assert took < 10, f"SIGTERM took {took:.1f}s"
    sender.join(60)
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
