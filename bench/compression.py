"""Compression: what each codec costs the worker's producer, and its consumer, per record.

The same seeded workload's records (raw events: bodies, headers, processor trees)
are written once per codec to a fresh topic by the worker's own producer
(`app.worker.producer_factory`, batches built and sent whole as `app.engine.outbox` does,
512 KB per partition), then read back by a consumer. Measured per codec, in this
process: CPU seconds to build, compress and send the batches; bytes of the
compressed batches; CPU seconds to fetch and decompress them. Every figure is also
given as a ratio against `none` from the same run, which cancels out most of the
machine's load and the client's own overhead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

import simulator
from app.kafka.connection import Connection
from app.ops.config import COMPRESSIONS, Settings
from app.worker import producer_factory

from .common import PARTITIONS, delete_topics, say, wait_assigned
from .preload import WORKLOAD, partition_for


def workload_records(seed: int, executions: int) -> list[tuple[int, bytes | None, bytes, list]]:
    """(partition, key, value, headers) of every record of a seeded workload."""
    out = []
    for step in simulator.iter_steps(seed, executions, **WORKLOAD):
        rec = step.record
        own = step.execution.execution_id.encode() if step.execution else rec.key or b""
        out.append((partition_for(own), rec.key, rec.value, list(rec.headers or [])))
    return out


async def _produce(kafka: Connection, codec: str, topic: str, records) -> tuple[float, int]:
    """CPU seconds and compressed bytes of writing `records` as the worker writes."""
    settings = dataclasses.replace(
        Settings.from_env({}),
        compression=codec,
        processing_guarantee="at_least_once",  # the same producer, without a transaction
        connection=kafka,
    )
    producer = producer_factory(settings, transactional_id="")()
    await producer.start()
    try:
        cpu0 = time.process_time()
        open_: dict[int, object] = {}
        futures, sent = [], []

        async def send(partition: int, builder) -> None:
            builder.close()
            sent.append(builder)
            futures.append(await producer.send_batch(builder, topic, partition=partition))

        for partition, key, value, headers in records:
            builder = open_.get(partition)
            if builder is None:
                builder = open_[partition] = producer.create_batch()
            if builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
                await send(partition, builder)
                builder = open_[partition] = producer.create_batch()
                builder.append(timestamp=None, key=key, value=value, headers=headers)
        for partition, builder in open_.items():
            await send(partition, builder)
        await asyncio.gather(*futures)
        cpu = time.process_time() - cpu0
        return cpu, sum(b.size() for b in sent)  # built (compressed) when sent
    finally:
        await producer.stop()


async def _consume(kafka: Connection, topic: str, expected: int) -> float:
    """CPU seconds of fetching and decoding every record of `topic`."""
    consumer = AIOKafkaConsumer(
        topic,
        **kafka.aiokafka_kwargs(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=1024**2,  # the worker's fetch size per partition
    )
    await consumer.start()
    try:
        await wait_assigned(consumer)
        cpu0 = time.process_time()
        seen = 0
        deadline = time.monotonic() + 300
        while seen < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {seen:,} of {expected:,} records back from {topic}")
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            seen += sum(len(b) for b in batches.values())
        return time.process_time() - cpu0
    finally:
        await consumer.stop()


async def compression(
    kafka: Connection,
    seed: int,
    executions: int,
    codecs: tuple[str, ...] = COMPRESSIONS,
    rounds: int = 3,
) -> dict:
    """Each codec `rounds` times, interleaved, after one unmeasured warm-up round; the
    median CPU of each codec is kept (other jobs' load on the machine comes and goes)."""
    records = workload_records(seed, executions)
    raw_bytes = sum(len(v) + len(k or b"") for _, k, v, _ in records)
    say(
        f"compression: {len(records):,} records ({raw_bytes / 1e6:,.1f} MB), "
        f"{rounds} rounds of {len(codecs)} codecs after a warm-up"
    )
    run = time.monotonic_ns() % 10**8
    topics = {
        (codec, r): f"bench-codec-{run}-{codec}-{r}" for codec in codecs for r in range(rounds + 1)
    }
    admin = AIOKafkaAdminClient(**kafka.aiokafka_kwargs())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in topics.values()])
    finally:
        await admin.close()
    samples: dict[str, list[tuple[float, float, int]]] = {c: [] for c in codecs}
    try:
        for r in range(rounds + 1):  # round 0 warms the clients, the broker and the JIT up
            for codec in codecs:
                produce_cpu, size = await _produce(kafka, codec, topics[codec, r], records)
                consume_cpu = await _consume(kafka, topics[codec, r], len(records))
                if r:
                    samples[codec].append((produce_cpu, consume_cpu, size))
            say(f"compression: round {r} of {rounds} done" + (" (warm-up)" if not r else ""))
    finally:
        await delete_topics(kafka, list(topics.values()))
    rows = {}
    for codec, got in samples.items():
        produce_cpu = statistics.median(g[0] for g in got)
        consume_cpu = statistics.median(g[1] for g in got)
        rows[codec] = {
            "produce_cpu_s": produce_cpu,
            "produce_us_per_record": 1e6 * produce_cpu / len(records),
            "consume_cpu_s": consume_cpu,
            "consume_us_per_record": 1e6 * consume_cpu / len(records),
            "batch_bytes": got[0][2],
        }
    base = rows.get("none")
    if base:
        for row in rows.values():
            row["produce_cpu_vs_none"] = row["produce_cpu_s"] / base["produce_cpu_s"]
            row["consume_cpu_vs_none"] = row["consume_cpu_s"] / base["consume_cpu_s"]
            row["bytes_vs_none"] = row["batch_bytes"] / base["batch_bytes"]
    return {
        "records": len(records),
        "raw_bytes": raw_bytes,
        "executions": executions,
        "rounds": rounds,
        "codecs": rows,
    }


def text(result: dict) -> list[str]:
    lines = [
        "",
        f"compression: {result['records']:,} raw records ({result['raw_bytes'] / 1e6:,.1f} MB) "
        f"written by the worker's producer and read back, per codec (median CPU of "
        f"{result['rounds']} rounds; ratios against none in the same run)",
        f"  {'codec':>6} {'produce us/rec':>15} {'x none':>7} {'consume us/rec':>15} "
        f"{'x none':>7} {'MB':>8} {'x none':>7}",
    ]
    for codec, r in result["codecs"].items():
        lines.append(
            f"  {codec:>6} {r['produce_us_per_record']:>15.1f} "
            f"{r.get('produce_cpu_vs_none', float('nan')):>7.2f} "
            f"{r['consume_us_per_record']:>15.1f} "
            f"{r.get('consume_cpu_vs_none', float('nan')):>7.2f} "
            f"{r['batch_bytes'] / 1e6:>8.1f} {r.get('bytes_vs_none', float('nan')):>7.3f}"
        )
    return lines
