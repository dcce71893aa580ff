"""On a three-broker cluster: every topic the worker (and Faust) creates is replicated,
an internal topic made with fewer replicas is named at start, and a broker SIGKILLed
mid-stream costs no execution.

The cluster (localkafka.start_cluster: three broker+controller nodes, internal topics
replicated three times, min.insync.replicas=2) is started for this module only. Its
three JVMs take the module to one to three minutes on two loaded cores, past the
budget of `make test`: `make test-cluster` runs it (marker `cluster`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

import localkafka
from app.kafka.connection import Connection
from app.ops.config import Settings
from app.ops.topics import changelog_topic_name, ensure_topics, leader_topic_name
from chaos.processes import Topics, WorkerProcess

from .harness import consume_until, event

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[localkafka.Cluster]:
    cluster = localkafka.start_cluster(tmp_path_factory.mktemp("cluster"), brokers=3)
    try:
        yield cluster
    finally:
        cluster.stop()


def fresh_topics() -> Topics:
    run = uuid.uuid4().hex[:8]
    return Topics(f"raw-{run}", f"out-{run}", f"dlq-{run}", f"agents-{run}", f"merger-{run}")


async def _admin(bootstrap: str, work):
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await work(admin)
    finally:
        await admin.close()


def replicas(bootstrap: str, names: list[str]) -> dict[str, set[int]]:
    """Each topic's replica counts, one per partition (empty: no such topic)."""

    async def go(admin):
        return {
            t["topic"]: {len(p["replicas"]) for p in t["partitions"]}
            for t in await admin.describe_topics(names)
        }

    return asyncio.run(_admin(bootstrap, go))


def create(bootstrap: str, name: str, partitions: int, replication: int) -> None:
    asyncio.run(
        _admin(bootstrap, lambda a: a.create_topics([NewTopic(name, partitions, replication)]))
    )


@pytest.fixture(scope="module")
def merging(cluster, tmp_path_factory) -> Iterator[tuple[Topics, WorkerProcess]]:
    """A worker on the cluster, replication unset (so: three), its raw topic given."""
    topics = fresh_topics()
    create(cluster.bootstrap, topics.raw, 3, 3)
    worker = WorkerProcess(cluster.bootstrap, topics, Path(tmp_path_factory.mktemp("state")))
    worker.start()
    try:
        yield topics, worker
    finally:
        worker.stop()


def test_every_topic_the_worker_creates_has_three_replicas(cluster, merging):
    topics, _ = merging
    created = [
        topics.output,
        topics.dlq,
        topics.agents,
        f"{topics.app_id}-rekey",
        f"{topics.app_id}-held-changelog",  # where the in-flight state lives
        f"{topics.app_id}-__assignor-__leader",  # made by Faust too
    ]
    got = replicas(cluster.bootstrap, created)
    assert got == {name: {3} for name in created}


def test_an_internal_topic_with_too_few_replicas_is_named_at_start(cluster, caplog):
    topics = fresh_topics()
    create(cluster.bootstrap, topics.raw, 3, 3)
    settings = dataclasses.replace(
        Settings.from_env(topics.env()),
        connection=Connection(bootstrap_servers=cluster.bootstrap),
    )
    changelog = changelog_topic_name(settings)
    create(cluster.bootstrap, changelog, 3, 1)  # as a one-broker cluster made it
    with caplog.at_level(logging.WARNING, logger="app.ops.topics"):
        layout = asyncio.run(ensure_topics(settings))
    assert layout.replication == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # the topics it created itself have three
    assert f"topic {changelog} has 1 replica per partition, fewer than the 3" in warnings[0]
    assert "kafka-reassign-partitions" in warnings[0]
    # the leader topic is Faust's to create: missing, it is not warned about
    assert leader_topic_name(settings) not in warnings[0]


def test_a_broker_killed_mid_stream_costs_no_execution(cluster, merging):
    """Agents produce (acks=all) while one broker is SIGKILLed and restarted: every
    execution comes out merged exactly once and the worker never stops."""
    topics, worker = merging
    count = 300
    keys = [f"bk-{i}" for i in range(count)]
    victim = cluster.brokers[1]

    async def agents() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=cluster.bootstrap, enable_idempotence=True, linger_ms=5
        )
        await producer.start()
        try:
            for i, key in enumerate(keys):
                await producer.send(topics.raw, event(key, "RUNNING"), key=key.encode())
                await producer.send(
                    topics.raw, event(key, "COMPLETED", duration_ms=i), key=key.encode()
                )
                if i == count // 3:
                    await producer.flush()
                    victim.kill()  # mid-stream: a third sent, the rest to come
            await producer.flush()
        finally:
            await producer.stop()

    started = time.monotonic()
    asyncio.run(agents())  # every record acknowledged by the two brokers left
    assert not victim.alive
    victim.restart(wait=False)  # back while the output is read
    expected = {k.encode() for k in keys}
    got = consume_until(
        cluster.bootstrap,
        topics.output,
        lambda rs: expected <= {r.key for r in rs if r.origin == "merged"},
        timeout=120,
    )
    terminals = [r for r in got if r.key in expected]
    assert {r.key for r in terminals if r.origin == "merged"} == expected  # none lost
    assert len(terminals) == count  # none twice
    assert all(r.json["duration_ms"] == int(r.key[3:]) for r in terminals)  # none wrong
    assert worker.alive and worker.starts == 1, worker.log_tail()
    victim.wait_started()
    print(f"broker loss case: {time.monotonic() - started:.1f} s")
