"""Prometheus metrics, served by prometheus_client at /metrics (app.ops.web).

Nothing here runs per record. The engine hands each commit that went through to
`Metrics.committed` (its duration, its offsets, a copy of the counters as they
stood when the commit was cut, and the Kafka timestamps of the terminal events
whose records it published); everything else is read when Prometheus scrapes,
by a custom collector: the committed counters, the held-execution census
(app.state.inflight, cached) and the consumer lag (end offsets asked of the broker at
most once per scrape). prometheus_client's process, GC and platform collectors
are in the same registry.

Counters count what committed: a record the engine handled but whose
transaction has not committed yet is not in them.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from app.core import merge

log = logging.getLogger(__name__)

# cameleer-origin header value -> the engine's counter
ORIGINS = (
    (merge.MERGED, "merged"),
    (merge.TERMINAL_ONLY, "terminal_only"),
    (merge.STALE_RUNNING, "stale_flushed"),
    (merge.PASSTHROUGH, "passthrough"),
)
DLQ_REASONS = (
    merge.INVALID_JSON,
    merge.NOT_AN_OBJECT,
    merge.MISSING_EXECUTION_ID,
    merge.INVALID_STATUS,
    merge.UNSUPPORTED_PROTOCOL_VERSION,
    merge.TOO_LARGE,
)
# why a record was dropped -> the engine's counters for it
DROPPED = (
    ("duplicate_terminal", ("duplicate_terminal",)),
    ("late_running", ("running_after_terminal",)),
    ("redelivered", ("safety_net_redelivered",)),
    ("retention", ("held_expired", "running_too_old")),  # left the state, or never held
)
COMMIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
END_TO_END_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class _BatchHistogram:
    """Bucket counts of many observations at once (a commit's worth): one sort, then a
    bisection per bucket, instead of a locked `observe()` per value."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)  # cumulative: observations <= bound
        self.total = 0
        self.sum = 0.0

    def observe_all(self, values: list[float]) -> None:
        if not values:
            return
        values = sorted(values)
        for i, bound in enumerate(self.bounds):
            self.counts[i] += bisect.bisect_right(values, bound)
        self.total += len(values)
        self.sum += sum(values)

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        buckets = [(_le(b), c) for b, c in zip(self.bounds, self.counts, strict=True)]
        buckets.append(("+Inf", self.total))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.sum)


def _le(bound: float) -> str:
    return repr(float(bound))


class Metrics(Collector):
    def __init__(self, engine, census) -> None:
        self.engine = engine
        self.census = census  # app.state.inflight.InFlight
        self.registry = CollectorRegistry(auto_describe=False)
        # The process as the operating system sees it (process_resident_memory_bytes,
        # process_cpu_seconds_total, process_open_fds, ...), Python's garbage collector
        # (python_gc_*) and the interpreter's version: prometheus_client's own
        # collectors, registered in this registry rather than its global default one.
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.commit_seconds = Histogram(
            "cameleer_commit_seconds",
            "Duration of a commit: records handed over, delivered, offsets and transaction end",
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )
        self.end_to_end = _BatchHistogram(END_TO_END_BUCKETS)
        self.counts: dict[str, int] = {}  # the counters as of the last commit that went through
        self.transactions = {"committed": 0, "failed": 0}
        self.committed_offsets: dict = {}  # source TopicPartition -> offset committed
        self._lag: dict = {}  # source TopicPartition -> records behind
        self._census = None
        self.registry.register(self)

    # ---- from the engine, once per commit ----------------------------------------------

    def committed(self, seconds: float, offsets: dict, counts: dict, published_ms: list) -> None:
        self.commit_seconds.observe(seconds)
        self.transactions["committed"] += 1
        self.counts = counts
        self.committed_offsets.update(offsets)
        if published_ms:
            now_ms = time.time() * 1000
            self.end_to_end.observe_all([(now_ms - ts) / 1000 for ts in published_ms])

    def commit_failed(self) -> None:
        self.transactions["failed"] += 1

    # ---- at scrape time -------------------------------------------------------------------

    async def refresh(self, timeout: float = 2.0) -> None:
        """What the collector cannot read synchronously: end offsets and the held census."""
        try:
            self._census = await asyncio.wait_for(self.census.census(), timeout)
        except Exception as exc:  # the previous reading stays; the scrape still answers
            log.warning("metrics: held census failed: %r", exc)
        tps = sorted(self.engine.assigned)
        lag = {}
        if tps and self.engine.port is not None:
            try:
                ends = await asyncio.wait_for(self.engine.port.end_offsets(tps), timeout)
            except Exception as exc:
                log.warning("metrics: end offsets failed: %r", exc)
                ends = {}
            committed = {**self.engine.committed_offsets, **self.committed_offsets}
            for tp in tps:
                end, done = ends.get(tp), committed.get(tp)
                if end is not None and done is not None:
                    lag[tp] = max(0, end - done)
        self._lag = lag

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self):
        counts = self.counts
        live = self.engine.counts

        out = CounterMetricFamily(
            "cameleer_output_records",
            "Records committed to the output topic, by their cameleer-origin header",
            labels=["origin"],
        )
        for origin, counter in ORIGINS:
            out.add_metric([origin], counts.get(counter, 0))
        yield out

        dead = CounterMetricFamily(
            "cameleer_dead_letters",
            "Records committed to the dead-letter topic, by cameleer-error reason",
            labels=["reason"],
        )
        for reason in DLQ_REASONS:
            dead.add_metric([reason], counts.get(f"dlq_{reason}", 0))
        yield dead

        dropped = CounterMetricFamily(
            "cameleer_dropped",
            "Raw records read and deliberately not emitted, by why",
            labels=["why"],
        )
        for why, names in DROPPED:
            dropped.add_metric([why], sum(counts.get(n, 0) for n in names))
        yield dropped

        txn = CounterMetricFamily(
            "cameleer_transactions",
            "Commits (transactions with exactly_once), by result; a failed one stops the worker",
            labels=["result"],
        )
        for result, n in self.transactions.items():
            txn.add_metric([result], n)
        yield txn

        yield CounterMetricFamily(
            "cameleer_rebalances",
            "Partition assignments this worker took part in (the first one included)",
            value=live.get("rebalances", 0),
        )
        yield CounterMetricFamily(
            "cameleer_rekeyed_records",
            "Raw records moved to their execution's partition through the re-key topic",
            value=counts.get("rekeyed", 0),
        )
        yield self.end_to_end.family(
            "cameleer_end_to_end_seconds",
            "From a terminal event's Kafka timestamp to the commit that published its record",
        )

        held = GaugeMetricFamily(
            "cameleer_held_executions",
            "v1 executions held (RUNNING seen, no terminal yet), per owned partition",
            labels=["partition"],
        )
        stale = GaugeMetricFamily(
            "cameleer_held_stale_executions",
            "Held executions already flushed as stale RUNNING records, per owned partition",
            labels=["partition"],
        )
        oldest = GaugeMetricFamily(
            "cameleer_oldest_held_age_seconds",
            "Age of the oldest held execution (from its first RUNNING's Kafka timestamp)",
            labels=["partition"],
        )
        census = self._census
        if census is not None:
            now_ms = time.time() * 1000
            owned = set(self.engine_partitions())
            for partition in sorted(census.held):
                if partition not in owned:
                    continue
                held.add_metric([str(partition)], census.held[partition])
                stale.add_metric([str(partition)], census.stale.get(partition, 0))
                first = census.oldest_ms.get(partition)
                age = max(0.0, (now_ms - first) / 1000) if first is not None else 0.0
                oldest.add_metric([str(partition)], age)
        yield held
        yield stale
        yield oldest

        lag = GaugeMetricFamily(
            "cameleer_consumer_lag_records",
            "End offset minus committed offset of each source partition this worker owns",
            labels=["topic", "partition"],
        )
        owned_tps = self.engine.assigned
        for tp, n in sorted(self._lag.items()):
            if tp in owned_tps:
                lag.add_metric([tp.topic, str(tp.partition)], n)
        yield lag

        yield GaugeMetricFamily(
            "cameleer_assigned_partitions",
            "Source partitions (raw and re-key) this worker owns",
            value=len(owned_tps),
        )

    def engine_partitions(self) -> list[int]:
        """The state partitions this worker owns (the held gauges are per state partition)."""
        return sorted(self.engine.owned_state)
