"""Glue between Kafka records and the pure merge rules: read state, decide, apply.

`Processor.handle` runs inside the Faust agent for each raw record; `sweep` runs
from a timer for each partition this worker owns. Both end in `_apply`, which
writes state (RocksDB + changelog, same partition as the source record) and
sends outputs and dead letters to that same partition number, so all writes
caused by one raw partition stay on that partition of every topic.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from . import merge
from .heldstate import INDEX_PREFIX, Source, index_upper_bound, parse_index_key, state_key
from .merge import DeadLetter, Decision, Rejected, Rules

log = logging.getLogger(__name__)

ORIGIN = "cameleer-origin"


def now_ms() -> int:
    return int(time.time() * 1000)


class StateStore:
    """The held-state table, addressed by partition (Faust's RocksDB store + changelog)."""

    def __init__(self, table) -> None:
        self.table = table

    def _db(self, partition: int):
        return self.table.data._db_for_partition(partition)

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self._db(partition).get(key)

    def apply(self, partition: int, writes: dict[bytes, bytes | None]) -> None:
        db = self._db(partition)
        for key, value in writes.items():
            if value is None:
                db.delete(key)
            else:
                db.put(key, value)
            self.table.send_changelog(partition, key, value)

    def due(self, partition: int, now: int, limit: int) -> list[bytes]:
        """Index keys due at `now`, oldest first: reads only those, not the whole store."""
        bound = index_upper_bound(now)
        keys = []
        for key in self._db(partition).keys(from_key=INDEX_PREFIX):
            if key >= bound or len(keys) >= limit:
                break
            keys.append(key)
        return keys


class Processor:
    def __init__(self, rules: Rules, store: StateStore, output, dlq, registry) -> None:
        self.rules = rules
        self.store = store
        self.output = output
        self.dlq = dlq
        self.registry = registry
        self.counts: Counter[str] = Counter()

    async def handle(self, message) -> None:
        source = Source(
            message.topic,
            message.partition,
            message.offset,
            message.timestamp_ms
            if hasattr(message, "timestamp_ms")
            else int(message.timestamp * 1000),
            message.key,
            message.value if message.value is not None else b"",
            tuple(message.headers or ()),
        )
        parsed = merge.classify(source)
        if isinstance(parsed, Rejected):
            await self._dead(DeadLetter(parsed.reason, parsed.detail, parsed.source))
            return
        if merge.protocol_of(parsed, self.registry.versions) == 2:
            decision = merge.passthrough(parsed, self.rules)
        else:
            stored = self.store.get(source.partition, state_key(parsed.execution_id))
            decision = merge.decide(parsed, stored, self.rules, now_ms())
        await self._apply(source.partition, decision)

    async def sweep(self, partition: int, limit: int = 10_000) -> int:
        """Flush due stale RUNNINGs and expire due markers of one partition."""
        now = now_ms()
        keys = self.store.due(partition, now, limit)
        for key in keys:
            due, execution_id = parse_index_key(key)
            stored = self.store.get(partition, state_key(execution_id))
            await self._apply(
                partition, merge.sweep_entry(execution_id, due, stored, self.rules, now)
            )
        return len(keys)

    async def _apply(self, partition: int, decision: Decision) -> None:
        if decision.writes:
            self.store.apply(partition, decision.writes)
        for out in decision.outputs:
            headers = [*out.headers, (ORIGIN, out.origin.encode())]
            await self.output.send(
                key=out.key, value=out.value, partition=partition, headers=headers
            )
        for dead in decision.dead:
            await self._dead(dead)
        if decision.counter:
            self.counts[decision.counter] += 1

    async def _dead(self, dead: DeadLetter) -> None:
        src = dead.source
        headers = [
            *src.headers,
            ("cameleer-error", dead.reason.encode()),
            ("cameleer-error-detail", dead.detail.encode()[:1000]),
            ("cameleer-source-topic", src.topic.encode()),
            ("cameleer-source-partition", str(src.partition).encode()),
            ("cameleer-source-offset", str(src.offset).encode()),
            ("cameleer-source-timestamp", str(src.timestamp_ms).encode()),
        ]
        await self.dlq.send(key=src.key, value=src.value, partition=src.partition, headers=headers)
        self.counts[f"dlq_{dead.reason}"] += 1
        log.warning(
            "dead letter %s: %s (%s[%d]@%d)",
            dead.reason,
            dead.detail,
            src.topic,
            src.partition,
            src.offset,
        )
