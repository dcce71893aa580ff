"""Glue between Kafka records and the pure merge rules: read state, decide, append outputs.

Synchronous on purpose: `handle` takes a whole fetched batch of one source
partition and runs it to the end without yielding, appending every record it
causes to the engine's `Outbox` and every state change to the `StateStore`'s
overlay. Every decision comes from `app.core.merge`; this module only moves bytes
and counts. `sweep` does the same for the due entries of one partition's time
index (stale flushes, marker expiry).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from murmurhash2 import murmurhash2

from app.core import merge
from app.core.heldstate import Source, parse_index_key, state_key, state_key_of
from app.core.merge import DeadLetter, Decision, Rejected, Rules
from app.state.statestore import StateStore

log = logging.getLogger(__name__)

ORIGIN = "cameleer-origin"
_ORIGIN_VALUES = {
    origin: origin.encode()
    for origin in (merge.MERGED, merge.TERMINAL_ONLY, merge.STALE_RUNNING, merge.PASSTHROUGH)
}
# Headers of re-key records: where the record was first read (DLQ headers name that).
REKEY_HEADERS = (
    "cameleer-rekey-topic",
    "cameleer-rekey-partition",
    "cameleer-rekey-offset",
    "cameleer-rekey-timestamp",
    "cameleer-rekey-key",
)

# Kafka's murmur2 is murmurhash2 with this seed (the Java client's default partitioner).
KAFKA_MURMUR2_SEED = 0x9747B28C


def partition_for(key: bytes, partitions: int) -> int:
    """The Java client's default partitioner: where an agent's correctly keyed record lands.

    murmurhash2 (compiled) instead of aiokafka's pure-Python murmur2: a tenth of the
    time, and murmur2 was 9% of the processing (bench); a unit test checks they agree.
    """
    return (murmurhash2(key, KAFKA_MURMUR2_SEED) & 0x7FFFFFFF) % partitions


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Destinations:
    """Where the worker writes, and how many partitions each topic has."""

    output_topic: str
    dlq_topic: str
    rekey_topic: str
    # The held state's partitions (re-key and changelog topics, fixed for the
    # deployment): an execution's state partition is its execution_id's murmur2
    # modulo this, whatever the raw topic's partition count (docs/growing-topics.md).
    partitions: int
    dlq_partitions: int
    output_partitions: int


class Processor:
    def __init__(
        self,
        rules: Rules,
        store: StateStore,
        destinations: Destinations,
        registry_versions: dict[str, int],
        counts: Counter[str],
    ) -> None:
        self.rules = rules
        self.store = store
        self.to = destinations
        self.versions = registry_versions  # agent_id -> protocol version, kept current
        self.counts = counts
        self.retention = merge.RetentionReport()  # what left the state, logged
        # Kafka timestamps of the terminal events (v1 or v2) whose records were emitted
        # since a commit last took them (`take_published`: app.ops.metrics' end-to-end latency)
        self.published_ms: list[int] = []

    def take_published(self) -> list[int]:
        """The Kafka timestamps gathered since the last call (a commit takes them)."""
        published, self.published_ms = self.published_ms, []
        return published

    def handle(self, partition: int, records: Sequence, outbox) -> None:
        """Records of one source partition (raw or re-key), in offset order.

        `partition`: the state partition they are handled in, the re-key partition's
        own, or for raw partition p, p modulo the state's count (the assignment gives
        raw p to the owner of that state partition: app.overrides.assignor)."""
        if not records:
            return
        rekeyed = records[0].topic == self.to.rekey_topic  # one partition: one topic
        now = now_ms()  # one clock reading per batch: the batch is handled at once
        get = self.store.get
        versions = self.versions
        rules = self.rules
        classify = merge.classify
        decide = merge.decide
        for record in records:
            if rekeyed:
                source = self._rekeyed_source(record)
            else:
                source = Source(
                    record.topic,
                    record.partition,
                    record.offset,
                    record.timestamp,
                    record.key,
                    record.value,
                    tuple(record.headers or ()),
                )
            parsed = classify(source)
            if parsed.__class__ is Rejected:
                self._dead(
                    partition, DeadLetter(parsed.reason, parsed.detail, parsed.source), outbox
                )
                continue
            if parsed.protocol_version == 2 or (
                parsed.protocol_version is None and merge.protocol_of(parsed, versions) == 2
            ):
                decision = merge.passthrough(parsed, rules)
            elif not rekeyed and (
                record.key != parsed.key
                or partition_for(parsed.key, self.to.partitions) != partition
            ):
                # Its partner may be on another partition (no key or another key, or a
                # raw partition whose state partition is not its execution's: the raw
                # topic grew): move it to its execution's state partition, through the
                # internal re-key topic.
                self._forward(source, parsed.key, outbox)
                continue
            else:
                stored = get(partition, state_key_of(parsed.key))
                # Read on a raw partition beyond the state's count (the raw topic grew):
                # its execution's other events may be on another raw partition, not
                # handled yet, as for a re-keyed record (app.core.merge, "Mixed keying").
                elsewhere = rekeyed or record.partition != partition
                decision = decide(parsed, stored, rules, now, elsewhere)
            self._apply(partition, decision, outbox)
            if decision.outputs:  # a terminal record (a RUNNING emits nothing here)
                self.published_ms.append(source.timestamp_ms)

    @staticmethod
    def _rekeyed_source(record) -> Source:
        """A re-key record's source: where it was first read, from its headers."""
        headers = tuple(record.headers or ())
        meta = {k: v for k, v in headers if k in REKEY_HEADERS}
        return Source(
            meta["cameleer-rekey-topic"].decode(),
            int(meta["cameleer-rekey-partition"]),
            int(meta["cameleer-rekey-offset"]),
            int(meta["cameleer-rekey-timestamp"]),
            meta.get("cameleer-rekey-key"),
            record.value,
            tuple((k, v) for k, v in headers if k not in REKEY_HEADERS),
        )

    def _forward(self, source: Source, key: bytes, outbox) -> None:
        headers = [
            *source.headers,
            ("cameleer-rekey-topic", source.topic.encode()),
            ("cameleer-rekey-partition", str(source.partition).encode()),
            ("cameleer-rekey-offset", str(source.offset).encode()),
            ("cameleer-rekey-timestamp", str(source.timestamp_ms).encode()),
        ]
        if source.key is not None:
            headers.append(("cameleer-rekey-key", source.key))
        outbox.add(
            self.to.rekey_topic,
            partition_for(key, self.to.partitions),
            key,
            source.value,
            headers,
            source.timestamp_ms,
        )
        self.counts["rekeyed"] += 1

    def sweep(self, partition: int, outbox, safe_ms: int = -1, limit: int = 10_000) -> int:
        """Flush due stale RUNNINGs, expire what is past its retention, let waiting
        terminals go (`safe_ms`: see app/core/rekeybarrier.py), on one partition."""
        now = now_ms()
        keys = self.store.due(partition, now, limit)
        for key in keys:
            due, execution_id = parse_index_key(key)
            stored = self.store.get(partition, state_key(execution_id))
            decision = merge.sweep_entry(execution_id, due, stored, self.rules, now, safe_ms)
            self._apply(partition, decision, outbox, execution_id)
            if decision.outputs and decision.terminal_ts_ms >= 0:  # a waiting terminal's
                self.published_ms.append(decision.terminal_ts_ms)
            self.retention.add(decision.counter)
        if line := self.retention.report(now):
            log.info("%s", line)
        self.counts["sweep_entries"] += len(keys)
        return len(keys)

    def _apply(
        self, partition: int, decision: Decision, outbox, execution_id: str | None = None
    ) -> None:
        if decision.writes:
            self.store.apply(partition, decision.writes)
        for out in decision.outputs:
            headers = [*out.headers, (ORIGIN, _ORIGIN_VALUES[out.origin])]
            outbox.add(
                self.to.output_topic,
                partition_for(out.key, self.to.output_partitions),
                out.key,
                out.value,
                headers,
            )
        for dead in decision.dead:
            self._dead(partition, dead, outbox)
        if decision.counter:
            self.counts[decision.counter] += 1
        if decision.note:  # e.g. a held RUNNING that reached its retention
            log.info(
                "%s", decision.note, extra={"execution_id": execution_id, "partition": partition}
            )

    def _dead(self, partition: int, dead: DeadLetter, outbox) -> None:
        src = dead.source
        headers = [
            *src.headers,
            ("cameleer-error", dead.reason.encode()),
            ("cameleer-error-detail", dead.detail[:500].encode()),
            ("cameleer-source-topic", src.topic.encode()),
            ("cameleer-source-partition", str(src.partition).encode()),
            ("cameleer-source-offset", str(src.offset).encode()),
            ("cameleer-source-timestamp", str(src.timestamp_ms).encode()),
        ]
        # keyed like the source (the DLQ keeps the original key bytes); unkeyed
        # records stay beside their source partition's other dead letters
        dlq_partition = (
            partition_for(src.key, self.to.dlq_partitions)
            if src.key
            else src.partition % self.to.dlq_partitions
        )
        outbox.add(self.to.dlq_topic, dlq_partition, src.key, src.value, headers)
        self.counts[f"dlq_{dead.reason}"] += 1
        log.warning(
            "dead letter %s: %s (%s[%d]@%d)",
            dead.reason,
            dead.detail,
            src.topic,
            src.partition,
            src.offset,
            extra={"partition": src.partition, "topic": src.topic, "offset": src.offset},
        )
