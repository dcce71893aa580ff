"""Throughput: the same preloaded raw topic read by (a) a plain passthrough, the ceiling,
and (b) the real worker, which is timed until its last expected record is readable."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from app.kafka.connection import Connection

from .common import (
    PARTITIONS,
    Progress,
    Sampler,
    Topics,
    broker_pid,
    cpu_of,
    delete_topics,
    dir_bytes,
    handled,
    mb,
    read_committed_consumer,
    say,
    start_worker,
    wait_assigned,
    worker_counts,
)
from .preload import Preloaded
from .profile import Profile

TERMINAL_ORIGINS = {b"merged", b"terminal-only", b"passthrough"}


async def read_terminals(consumer: AIOKafkaConsumer, seen: set[bytes]) -> None:
    """One poll of the output topic: the keys of the terminal records it returned."""
    batches = await consumer.getmany(timeout_ms=200, max_records=20_000)
    for batch in batches.values():
        for m in batch:
            if dict(m.headers or ()).get("cameleer-origin") in TERMINAL_ORIGINS:
                seen.add(m.key)


async def ceiling(kafka: Connection, topics: Topics, sink: str, records: int) -> dict:
    """(a) consume every raw record and produce it unchanged to `sink`, as fast as aiokafka
    goes: no parsing, no state, no transactions (idempotent producer, acks=all)."""
    consumer = AIOKafkaConsumer(
        topics.raw,
        **kafka.aiokafka_kwargs(),
        group_id=f"{topics.app_id}-ceiling",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    producer = AIOKafkaProducer(
        **kafka.aiokafka_kwargs(),
        enable_idempotence=True,
        acks="all",
        linger_ms=20,
        max_batch_size=1024 * 1024,
        max_request_size=8_000_000,
    )
    bpid = broker_pid(kafka.bootstrap_servers)
    await producer.start()
    await consumer.start()
    try:
        await wait_assigned(consumer)
        progress = Progress("ceiling (a) copied", total=records)
        cpu0, broker0 = time.process_time(), cpu_of(bpid)
        started = time.monotonic()
        copied = 0
        while copied < records:
            batches = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            for tp, batch in batches.items():
                for m in batch:
                    await producer.send(
                        sink, m.value, key=m.key, partition=tp.partition, headers=list(m.headers)
                    )
                copied += len(batch)
            progress.tick(copied)
        await producer.flush()
        await consumer.commit()
        seconds = time.monotonic() - started
        cpu = time.process_time() - cpu0
        broker1 = cpu_of(bpid)
    finally:
        await consumer.stop()
        await producer.stop()
    result = {
        "records": copied,
        "seconds": seconds,
        "events_per_s": copied / seconds,
        "cpu_seconds": cpu,
        "cpu_share_of_one_core": cpu / seconds,
        "broker_cpu_share": (broker1 - broker0) / seconds if broker1 and broker0 else None,
    }
    say(
        f"ceiling (a): {copied:,} records in {seconds:.1f}s = "
        f"{result['events_per_s']:,.0f} events/s (passthrough CPU {100 * cpu / seconds:.0f}%)"
    )
    return result


async def worker_run(
    kafka: Connection,
    topics: Topics,
    pre: Preloaded,
    state_dir: Path,
    profile_to: Path | None = None,
    profile_seconds: float = 20.0,
) -> dict:
    """(b) start the worker after the preload; time until the read_committed consumer has
    seen one terminal record per expected execution."""
    consumer = None
    bpid = broker_pid(kafka.bootstrap_servers)
    broker0 = cpu_of(bpid)
    started = time.monotonic()
    worker = start_worker(kafka, topics, state_dir)
    sampler = Sampler(worker.process.pid).start()
    first_handled: float | None = None
    seen: set[bytes] = set()
    stats_at = 0.0
    counts: dict[str, int] = {}
    progress = Progress("worker (b) terminal records readable", total=pre.expected_outputs)
    profile: Profile | None = None
    try:
        # the output topic is the worker's to create: wait until it is ready
        while not worker.ready:
            if not worker.alive:
                raise RuntimeError(f"worker exited early:\n{worker.log_tail()}")
            counts = worker_counts(worker)
            if first_handled is None and handled(counts):
                first_handled = time.monotonic()
            await asyncio.sleep(0.2)  # poll for readiness
        ready_at = time.monotonic()
        consumer = read_committed_consumer(kafka, topics.output)
        await consumer.start()
        await wait_assigned(consumer)
        while len(seen) < pre.expected_outputs:
            if not worker.alive:
                raise RuntimeError(f"worker exited:\n{worker.log_tail()}")
            await read_terminals(consumer, seen)
            now = time.monotonic()
            if now - stats_at > 0.25:  # /stats: first handled record, and progress
                stats_at = now
                counts = worker_counts(worker) or counts
                if first_handled is None and handled(counts):
                    first_handled = now
                if profile_to and profile is None and first_handled and now - first_handled > 3:
                    profile = Profile(worker.process.pid, profile_to, profile_seconds).start()
            progress.tick(
                len(seen),
                f"worker handled {handled(counts):,}/{pre.records:,} raw records, "
                f"RSS {mb(sampler.last_rss):,.0f} MB",
            )
        done = time.monotonic()
        counts = worker_counts(worker) or counts
        seconds = (worker.stats() or {}).get("seconds", {})
        state_bytes = dir_bytes(state_dir / "rocksdb")
        cpu = sampler.cpu_seconds
        broker1 = cpu_of(bpid)
    finally:
        if consumer is not None:
            await consumer.stop()
        sampler.stop()
        worker.stop()
        if profile is not None:
            profile.join()
    first = first_handled or ready_at
    from_start = done - started
    from_first = done - first
    result = {
        "records": pre.records,
        "expected_outputs": pre.expected_outputs,
        "outputs_seen": len(seen),
        "seconds_from_start": from_start,
        "seconds_from_first_handled": from_first,
        "startup_seconds": first - started,
        "events_per_s": pre.records / from_first,
        "events_per_s_from_start": pre.records / from_start,
        "executions_per_s": pre.executions / from_first,
        "peak_rss_bytes": sampler.peak,
        "state_bytes": state_bytes,
        "worker_cpu_seconds": cpu,
        "worker_cpu_share_of_one_core": cpu / from_start,
        "broker_cpu_share": (broker1 - broker0) / from_start if broker1 and broker0 else None,
        "counts": counts,
        "seconds_by_activity": seconds,
        "rss_samples": sampler.samples,
    }
    if profile is not None:
        result["profile"] = {"raw": str(profile_to), "hot": profile.hot, "error": profile.error}
    say(
        f"worker (b): {pre.records:,} records -> {len(seen):,} terminal records in "
        f"{from_first:.1f}s from its first handled record ({from_start:.1f}s from start) = "
        f"{result['events_per_s']:,.0f} events/s; peak RSS {mb(sampler.peak):,.0f} MB, "
        f"state {mb(state_bytes):,.1f} MB, worker CPU {100 * cpu / from_start:.0f}%; "
        f"wall seconds by activity {seconds}"
    )
    return result


async def plain_loop_run(
    kafka: Connection, topics: Topics, pre: Preloaded, state_dir: Path
) -> dict:
    """(c) bench.plainloop in its own process; timed like (b), from its first record."""
    run = f"plain-{topics.app_id}"
    output, dlq = f"{topics.output}-plain", f"{topics.dlq}-plain"
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "plainloop.log"
    command = [
        sys.executable,
        "-m",
        "bench.plainloop",
        *("--bootstrap", kafka.bootstrap_servers, "--raw", topics.raw, "--output", output),
        *("--dlq", dlq, "--agents", topics.agents, "--app-id", run),
        *("--state-dir", str(state_dir / "rocksdb"), "--partitions", str(PARTITIONS)),
    ]
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    sampler = Sampler(process.pid).start()
    consumer = None
    seen: set[bytes] = set()
    first: float | None = None
    progress = Progress("plain loop (c) terminal records readable", total=pre.expected_outputs)

    def log_tail() -> str:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])

    try:
        while not await _topic_exists(kafka, output):  # the loop creates its topics
            if process.poll() is not None:
                raise RuntimeError(f"plain loop exited early:\n{log_tail()}")
            await asyncio.sleep(0.2)  # poll: topic creation
        consumer = read_committed_consumer(kafka, output)
        await consumer.start()
        await wait_assigned(consumer)
        while len(seen) < pre.expected_outputs:
            if process.poll() is not None:
                raise RuntimeError(f"plain loop exited:\n{log_tail()}")
            await read_terminals(consumer, seen)
            if first is None:
                first = _first_record_time(log_path)
            progress.tick(len(seen))
        done = time.monotonic()
        first = first or _first_record_time(log_path) or started
        cpu = sampler.cpu_seconds
    finally:
        if consumer is not None:
            await consumer.stop()
        sampler.stop()
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        await delete_topics(kafka, [output, dlq, f"{run}-rekey", f"{run}-changelog"])
    seconds = done - first
    result = {
        "records": pre.records,
        "outputs_seen": len(seen),
        "seconds_from_first_record": seconds,
        "events_per_s": pre.records / seconds,
        "cpu_seconds": cpu,
        "peak_rss_bytes": sampler.peak,
    }
    say(
        f"plain loop (c): {pre.records:,} records -> {len(seen):,} terminal records in "
        f"{seconds:.1f}s from its first record = {result['events_per_s']:,.0f} events/s"
    )
    return result


def _first_record_time(log_path: Path) -> float | None:
    """The loop's `first-record <unix time>` line, on this process's monotonic clock."""
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("first-record "):
            return time.monotonic() - (time.time() - float(line.split()[1]))
    return None


async def _topic_exists(kafka: Connection, name: str) -> bool:
    admin = AIOKafkaAdminClient(**kafka.aiokafka_kwargs())
    await admin.start()
    try:
        return name in set(await admin.list_topics())
    finally:
        await admin.close()
