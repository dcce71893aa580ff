"""Memory: the worker's RSS while it holds N RUNNING executions (nothing ends them)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import simulator
from app.kafka.connection import Connection

from .common import (
    Progress,
    Sampler,
    Topics,
    dir_bytes,
    mb,
    say,
    start_worker,
    worker_counts,
)
from .preload import producer

RUNNING_ONLY = simulator.only(stuck_share=1.0)


async def preload_running(kafka: Connection, topics: Topics, seed: int, n: int) -> float:
    """N RUNNING events (simulator sizes: 400-800 bytes), keyed by execution_id."""
    prod = producer(kafka)
    await prod.start()
    progress = Progress("hold: RUNNING events produced", total=n)
    started = time.monotonic()
    try:
        for i, step in enumerate(simulator.iter_steps(seed, n, **RUNNING_ONLY), 1):
            rec = step.record
            await prod.send(topics.raw, rec.value, key=rec.key, headers=rec.headers)
            if i % 2000 == 0:
                progress.tick(i)
        await prod.flush()
    finally:
        await prod.stop()
    seconds = time.monotonic() - started
    say(f"hold: produced {n:,} RUNNING events in {seconds:.1f}s")
    return seconds


async def hold(kafka: Connection, topics: Topics, state_dir: Path, n: int, seed: int) -> dict:
    produce_seconds = await preload_running(kafka, topics, seed, n)
    started = time.monotonic()
    worker = start_worker(kafka, topics, state_dir)
    sampler = Sampler(worker.process.pid).start()
    progress = Progress("hold: RUNNING executions held by the worker", total=n)
    first: float | None = None
    baseline = 0
    held = 0
    try:
        while held < n:
            if not worker.alive:
                raise RuntimeError(f"worker exited:\n{worker.log_tail()}")
            held = worker_counts(worker).get("running_held", held)
            if first is None and held:
                first = time.monotonic()
                baseline = sampler.last_rss  # a started worker holding (almost) nothing
            progress.tick(held, f"RSS {mb(sampler.last_rss):,.0f} MB")
            await asyncio.sleep(0.5)  # poll /stats
        done = time.monotonic()
        await asyncio.sleep(5)  # RSS once it holds them all and idles (commits, sweeps)
        settled = sampler.last_rss
        state_bytes = dir_bytes(state_dir / "rocksdb")
    finally:
        sampler.stop()
        worker.stop()
    first = first or started
    result = {
        "held": n,
        "produce_seconds": produce_seconds,
        "seconds_to_hold_all": done - started,
        "events_per_s": n / max(done - first, 1e-9),
        "peak_rss_bytes": sampler.peak,
        "settled_rss_bytes": settled,
        "baseline_rss_bytes": baseline,
        "rss_bytes_per_held": (settled - baseline) / n if baseline else None,
        "state_bytes": state_bytes,
        "worker_cpu_seconds": sampler.cpu_seconds,
        "rss_samples": sampler.samples,
    }
    say(
        f"hold: {n:,} RUNNING held after {done - started:.1f}s "
        f"({result['events_per_s']:,.0f} events/s); peak RSS {mb(sampler.peak):,.0f} MB, "
        f"settled {mb(settled):,.0f} MB, state {mb(state_bytes):,.1f} MB"
    )
    return result
