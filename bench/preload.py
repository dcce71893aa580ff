"""The throughput input: a seeded simulator workload, produced once into the raw topic."""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

import simulator
from app.kafka.connection import Connection
from simulator import Kind

from .common import PARTITIONS, Progress, Topics, say

# The workload's mix: 10% v2 and 1% stuck; the other kinds (duplicates, late and
# repeated RUNNINGs, unkeyed and malformed records) keep the simulator's defaults, as in
# the chaos run.
WORKLOAD = {"v2_share": 0.10, "stuck_share": 0.01}


def partition_for(key: bytes) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % PARTITIONS


@dataclass
class Preloaded:
    executions: int
    records: int
    bytes: int
    expected_outputs: int  # executions with a terminal event: one terminal record each
    stuck: int
    v2: int
    malformed: int
    seconds: float
    generate_seconds: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def producer(kafka: Connection, **kw) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **kafka.aiokafka_kwargs(),
        enable_idempotence=True,
        acks="all",
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=4_000_000,
        request_timeout_ms=60_000,
        **kw,
    )


async def register_agents(kafka: Connection, topics: Topics, seed: int, **options) -> None:
    prod = producer(kafka)
    await prod.start()
    try:
        for rec in simulator.agent_registrations(seed, **options):
            await prod.send(topics.agents, rec.value, key=rec.key)
        await prod.flush()
    finally:
        await prod.stop()


async def preload(
    kafka: Connection, topics: Topics, seed: int, executions: int, **options
) -> Preloaded:
    """Produce every record of the workload, in order, as the chaos run's agents do: an
    agent that does not key by execution_id still sends one execution to one partition."""
    options = {**WORKLOAD, **options}
    await register_agents(kafka, topics, seed, **options)
    prod = producer(kafka)
    await prod.start()
    # about 2.1 records per execution with the default mix
    progress = Progress("preload records", total=None)
    started = time.monotonic()
    gen_time = 0.0
    records = size = expected = stuck = v2 = malformed = 0
    done_execs = 0
    try:
        steps = simulator.iter_steps(seed, executions, **options)
        while True:
            t = time.perf_counter()
            step = next(steps, None)
            gen_time += time.perf_counter() - t
            if step is None:
                break
            rec = step.record
            ex = step.execution
            partition = None
            if ex is None:
                malformed += 1
                partition = records % PARTITIONS
            else:
                own = ex.execution_id.encode()
                if rec.key != own:
                    partition = partition_for(own)
                if step.index == 0:
                    if ex.kind == Kind.V1_STUCK:
                        stuck += 1
                    else:
                        expected += 1
                    if ex.kind == Kind.V2:
                        v2 += 1
                if step.last:
                    done_execs += 1
            await prod.send(
                topics.raw, rec.value, key=rec.key, partition=partition, headers=rec.headers
            )
            records += 1
            size += len(rec.value)
            if records % 2000 == 0:
                progress.tick(
                    records,
                    f"{100.0 * done_execs / executions:5.1f}% of {executions:,} executions, "
                    f"{size / 1e6:,.0f} MB",
                )
        await prod.flush()
    finally:
        await prod.stop()
    seconds = time.monotonic() - started
    say(
        f"preloaded {records:,} records ({size / 1e6:,.0f} MB) of {executions:,} executions "
        f"in {seconds:.1f}s ({records / seconds:,.0f} records/s; generation {gen_time:.1f}s)"
    )
    return Preloaded(executions, records, size, expected, stuck, v2, malformed, seconds, gen_time)
