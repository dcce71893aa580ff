"""Latency: a producer at a fixed rate, a read_committed consumer; the time from a
terminal event's produce to its merged record being readable, per rate."""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer

import simulator
from app.kafka.connection import Connection

from .common import (
    Sampler,
    Topics,
    all_topics,
    create_topics,
    delete_topics,
    fresh_topics,
    handled,
    read_committed_consumer,
    say,
    start_worker,
    wait_assigned,
    worker_counts,
)
from .preload import partition_for, register_agents

POOL = 4000  # simulator executions, cycled with fresh execution ids
GAP_MS = (50, 200)  # RUNNING -> terminal, like short real routes
TICK = 0.001  # seconds between pacing rounds of the producer
DRAIN = 30.0  # seconds to wait, after the last send, for the last merged records
# v1 executions sent as their terminal event alone: a terminal that finds nothing held
# waits for the re-key topic's progress (mixed keying), measured apart from the pairs
TERMINAL_ONLY_SHARE = 0.02


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


class Pool:
    """Realistic records from the simulator (v1 RUNNING + terminal, 10% v2), re-used with a
    fresh execution id each time (same length, so sizes stay the same)."""

    def __init__(self, seed: int) -> None:
        work = simulator.generate(seed, POOL, **simulator.only(v2_share=0.10))
        self.items = list(work.executions.values())
        self.n = 0
        self.rng = random.Random(seed)

    def next(self) -> tuple[bytes, list]:
        """(new execution id, [(value, headers), ...]) with the ids replaced."""
        ex = self.items[self.n % len(self.items)]
        self.n += 1
        old = ex.execution_id.encode()
        new = f"{self.rng.getrandbits(128):032x}"
        new = f"{new[:8]}-{new[8:12]}-{new[12:16]}-{new[16:20]}-{new[20:32]}".encode()
        return new, [(r.value.replace(old, new), r.headers) for r in ex.events]


async def run_rate(
    kafka: Connection,
    topics: Topics,
    pool: Pool,
    rate: int,
    seconds: float,
    warmup: float,
    consumer,
) -> dict:
    """Produce `rate` events/s for warmup+seconds; terminals produced after the warm-up
    count. The produce time is when the record is handed to the producer (send() called);
    the ack time is kept too."""
    producer = AIOKafkaProducer(
        **kafka.aiokafka_kwargs(),
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        max_request_size=4_000_000,
    )
    await producer.start()
    sent_at: dict[bytes, float] = {}
    acked_at: dict[bytes, float] = {}
    readable_at: dict[bytes, float] = {}
    stop = asyncio.Event()

    async def consume() -> None:
        while not stop.is_set() or len(readable_at) < len(sent_at):
            batches = await consumer.getmany(timeout_ms=50, max_records=10_000)
            now = time.monotonic()
            for batch in batches.values():
                for m in batch:
                    if m.key in sent_at and m.key not in readable_at:
                        readable_at[m.key] = now
            if stop.is_set() and time.monotonic() > stop_deadline[0]:
                return

    stop_deadline = [float("inf")]
    reader = asyncio.create_task(consume())
    pending: list[tuple[float, int, bytes, bytes, list]] = []  # due terminals
    seq = 0
    events = 0
    t0 = time.monotonic()
    measure_from = t0 + warmup
    end = measure_from + seconds
    last_progress = t0
    behind_max = 0
    rng = random.Random(rate)
    alone: set[bytes] = set()  # terminal-only executions
    try:
        while True:
            now = time.monotonic()
            if now >= end:
                break
            due = int((now - t0) * rate) - events  # slots due by the monotonic schedule
            behind_max = max(behind_max, due)
            for _ in range(due):
                slot = t0 + events / rate
                if pending and pending[0][0] <= slot:
                    _, _, key, value, headers = heapq.heappop(pending)
                    measured = slot >= measure_from
                    handed = time.monotonic()
                    fut = await producer.send(
                        topics.raw, value, key=key, partition=partition_for(key), headers=headers
                    )
                    if measured:
                        sent_at[key] = handed
                        fut.add_done_callback(
                            lambda _f, k=key: acked_at.__setitem__(k, time.monotonic())
                        )
                else:
                    key, records = pool.next()
                    value, headers = records[0]
                    if len(records) == 1:  # v2: one complete record, it is the terminal
                        handed = time.monotonic()
                        fut = await producer.send(
                            topics.raw,
                            value,
                            key=key,
                            partition=partition_for(key),
                            headers=headers,
                        )
                        if slot >= measure_from:
                            sent_at[key] = handed
                            fut.add_done_callback(
                                lambda _f, k=key: acked_at.__setitem__(k, time.monotonic())
                            )
                    else:
                        if rng.random() < TERMINAL_ONLY_SHARE:
                            alone.add(key)  # its RUNNING is never sent
                        else:
                            await producer.send(
                                topics.raw,
                                value,
                                key=key,
                                partition=partition_for(key),
                                headers=headers,
                            )
                        gap = rng.uniform(*GAP_MS) / 1000
                        tv, th = records[-1]
                        heapq.heappush(pending, (slot + gap, seq, key, tv, th))
                        seq += 1
                events += 1
            if now - last_progress >= 5:
                last_progress = now
                phase = "warm-up" if now < measure_from else "measuring"
                say(
                    f"latency {rate:,}/s ({phase}): {events:,} events sent "
                    f"({events / (now - t0):,.0f}/s), {len(readable_at):,}/{len(sent_at):,} "
                    f"measured terminals readable"
                )
            await asyncio.sleep(TICK)
        produce_seconds = time.monotonic() - t0
        await producer.flush()
        stop_deadline[0] = time.monotonic() + DRAIN
        stop.set()
        await reader
    finally:
        reader.cancel()
        await producer.stop()
    gave_up = time.monotonic()
    seen = [
        (readable_at[k] - sent_at[k]) * 1000 for k in readable_at if k in sent_at and k not in alone
    ]
    # never readable within the drain: counted at what they waited so far (a lower bound),
    # so a saturated worker shows in the percentiles instead of vanishing from them
    unseen = [
        (gave_up - t) * 1000 for k, t in sent_at.items() if k not in readable_at and k not in alone
    ]
    lat = sorted(seen + unseen)
    lone = sorted((readable_at.get(k, gave_up) - sent_at[k]) * 1000 for k in alone if k in sent_at)
    ack = sorted((acked_at[k] - sent_at[k]) * 1000 for k in acked_at)
    floor = min(unseen) if unseen else float("inf")
    result = {
        "rate": rate,
        "achieved_rate": events / produce_seconds,
        "events": events,
        "terminals_measured": len(sent_at) - len(lone),
        "terminals_readable": len(seen),
        "missing": len(unseen),
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "p99_ms": percentile(lat, 99),
        "max_ms": lat[-1] if lat else None,
        # a percentile at or above this is a lower bound (it includes unreadable records)
        "lower_bound_from_ms": None if floor == float("inf") else floor,
        "sustained_outputs_per_s": len(seen) / max(gave_up - measure_from, 1e-9),
        "ack_p50_ms": percentile(ack, 50),
        "ack_p99_ms": percentile(ack, 99),
        "producer_max_backlog_events": behind_max,
        "terminal_only_measured": len(lone),
        "terminal_only_p50_ms": percentile(lone, 50),
        "terminal_only_p99_ms": percentile(lone, 99),
    }
    say(
        f"latency at {rate:,}/s (achieved {result['achieved_rate']:,.0f}/s): "
        f"p50 {fmt(result['p50_ms'])}, p95 {fmt(result['p95_ms'])}, "
        f"p99 {fmt(result['p99_ms'])} over {len(lat):,} terminals; terminal-only "
        f"p50 {fmt(result['terminal_only_p50_ms'])}, p99 {fmt(result['terminal_only_p99_ms'])} "
        f"over {len(lone):,}"
        + (
            f"; {result['missing']:,} not readable within {DRAIN:.0f}s (percentiles from "
            f"{floor:,.0f} ms up are lower bounds)"
            if unseen
            else ""
        )
    )
    return result


def fmt(ms: float | None) -> str:
    return "n/a" if ms is None else f"{ms:,.0f} ms"


async def latency(
    kafka: Connection,
    state_dir: Path,
    rates: list[int],
    seconds: float,
    warmup: float,
    seed: int,
    keep: bool = False,
) -> dict:
    """Each rate gets fresh topics and a fresh worker, so no backlog carries over."""
    say(f"latency: generating a pool of {POOL:,} simulator executions")
    pool = Pool(seed)
    results = []
    peak = 0
    for rate in rates:
        topics = fresh_topics(f"lat{rate}")
        await create_topics(kafka, topics)
        await register_agents(kafka, topics, seed, v2_share=0.10)
        worker = start_worker(kafka, topics, state_dir / f"rate-{rate}")
        sampler = Sampler(worker.process.pid).start()
        consumer = None
        try:
            worker.wait_ready(180)
            consumer = read_committed_consumer(kafka, topics.output)
            await consumer.start()
            await wait_assigned(consumer)
            say(f"latency: {rate:,} events/s for {warmup:.0f}s warm-up + {seconds:.0f}s")
            res = await run_rate(kafka, topics, pool, rate, seconds, warmup, consumer)
            if not worker.alive:
                raise RuntimeError(f"worker exited:\n{worker.log_tail()}")
            counts = worker_counts(worker)
        finally:
            if consumer is not None:
                await consumer.stop()
            sampler.stop()
            worker.stop()
            if not keep:
                await delete_topics(kafka, all_topics(topics))
        res["worker_handled"] = handled(counts)
        res["worker_peak_rss_bytes"] = sampler.peak
        res["worker_cpu_seconds"] = sampler.cpu_seconds
        peak = max(peak, sampler.peak)
        results.append(res)
    return {
        "rates": results,
        "seconds": seconds,
        "warmup_seconds": warmup,
        "drain_seconds": DRAIN,
        "produce_time": "when the record is handed to the producer (send() called); "
        "ack_* figures are handed-to-acked",
        "gap_ms": list(GAP_MS),
        "peak_rss_bytes": peak,
    }
