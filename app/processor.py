"""Glue between Kafka records and the pure merge rules: read state, decide, apply.

`Processor.handle_batch` runs inside the Faust agent for each batch of records
of the raw topic (and of the internal re-key topic); `sweep` runs from a timer
for each partition this worker owns. Every decision comes from `app.merge`; this module
only moves bytes and counts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from aiokafka.partitioner import murmur2

from . import merge
from .heldstate import Source, parse_index_key, state_key
from .merge import DeadLetter, Decision, Rejected, Rules
from .outbox import Outbox
from .statestore import StateStore
from .transactions import fatal, processing_lock

log = logging.getLogger(__name__)

ORIGIN = "cameleer-origin"
# Headers of re-key records: where the record was first read (DLQ headers name that).
REKEY_HEADERS = (
    "cameleer-rekey-topic",
    "cameleer-rekey-partition",
    "cameleer-rekey-offset",
    "cameleer-rekey-timestamp",
    "cameleer-rekey-key",
)


def now_ms() -> int:
    return int(time.time() * 1000)


def partition_for(key: bytes, partitions: int) -> int:
    """The Java client's default partitioner: where an agent's correctly keyed record lands."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class Processor:
    def __init__(
        self,
        rules: Rules,
        store: StateStore,
        outbox: Outbox,
        *,
        output_topic: str,
        dlq_topic: str,
        rekey_topic: str,
        registry,
        partitions: int,
    ) -> None:
        self.rules = rules
        self.store = store
        self.outbox = outbox
        self.output_topic = output_topic
        self.dlq_topic = dlq_topic
        self.rekey_topic = rekey_topic
        self.registry = registry
        self.partitions = partitions
        self.counts: Counter[str] = Counter()
        self.retention = merge.RetentionReport()  # issue 10: what left the state, logged
        self.last_offsets: dict = {}  # TopicPartition -> last offset handled
        self._with_markers: set = set()  # partitions whose offset holes are transaction markers
        # set by the worker: async tp -> the group's committed offset, and
        # async (tp, offset) -> offset of the first record this worker reads from there
        self.committed_offset = None
        self.first_record_at = None

    async def handle_batch(self, messages: list) -> None:
        """A batch of records, each all or nothing: a commit never sees half of a record.

        Shielded, so a stopping agent cannot cut it in half either; the commit
        (which takes the same lock) then includes it, with its offsets.
        """
        await asyncio.shield(self._handle_batch_locked(messages))

    async def _check_resume(self, message) -> None:
        """The first record of a partition after an assignment must be the first one at
        or after the group's committed offset (a safety net behind
        MergerConsumer.perform_seek)."""
        committed = await self.committed_offset(message.tp)
        log.info("%s resumes at %d (committed %s)", message.tp, message.offset, committed)
        if committed is not None and message.offset > committed:
            await self._check_first(message, committed, f"where {committed} was due")

    async def _check_hole(self, message, last: int) -> None:
        """A record that does not follow the last one handled (chaos runs caught Faust's
        delivery skipping records right after a rebalance)."""
        await self._check_first(message, last + 1, f"after {last}")
        self._with_markers.add(message.tp)  # holes there are markers: no more reads

    async def _check_first(self, message, start: int, context: str) -> None:
        """`message` must be the first record readable from `start`: if not, records
        were skipped, and handling it would commit past them. Stop instead (nothing
        committed; the restart resumes at the committed offset). Transaction markers
        in between are fine: a read from `start` tells them from skipped records."""
        first = await self.first_record_at(message.tp, start)
        if first != message.offset:
            fatal(
                f"records skipped on {message.tp}",
                RuntimeError(
                    f"offset {message.offset} read {context} (first record there: {first})"
                ),
            )

    async def _handle_batch_locked(self, messages: list) -> None:
        async with processing_lock:
            for message in messages:
                last = self.last_offsets.get(message.tp)
                if last is None:
                    await self._check_resume(message)
                elif message.offset <= last:
                    # delivered again within one assignment (seen after rebalances):
                    # handled already, and in the same open transaction
                    self.counts["redelivered_dropped"] += 1
                    log.warning("%s: %d delivered again, dropped", message.tp, message.offset)
                    continue
                elif message.offset != last + 1 and message.tp not in self._with_markers:
                    await self._check_hole(message, last)
                try:
                    await self._handle(message)
                except Exception as exc:  # never skip a record: see transactions.fatal
                    fatal(f"handling {message.topic}[{message.partition}]@{message.offset}", exc)
                self.last_offsets[message.tp] = message.offset

    async def _handle(self, message) -> None:
        source = self._source(message)
        parsed = merge.classify(source)
        if isinstance(parsed, Rejected):
            await self._dead(
                message.partition, DeadLetter(parsed.reason, parsed.detail, parsed.source)
            )
            return
        key = parsed.execution_id.encode()
        if merge.protocol_of(parsed, self.registry.versions) == 2:
            await self._apply(message.partition, merge.passthrough(parsed, self.rules))
            return
        if message.key != key and message.topic != self.rekey_topic:
            # Its partner may be on another partition: move it to where its
            # execution_id hashes, through the internal re-key topic.
            await self._forward(message.partition, source, key)
            return
        stored = self.store.get(message.partition, state_key(parsed.execution_id))
        decision = merge.decide(parsed, stored, self.rules, now_ms())
        await self._apply(message.partition, decision)

    def _source(self, message) -> Source:
        headers = tuple(message.headers or ())
        value = message.value
        if message.topic != self.rekey_topic:
            return Source(
                message.topic,
                message.partition,
                message.offset,
                round(message.timestamp * 1000),
                message.key,
                value,
                headers,
            )
        meta = {k: v for k, v in headers if k in REKEY_HEADERS}
        return Source(
            meta["cameleer-rekey-topic"].decode(),
            int(meta["cameleer-rekey-partition"]),
            int(meta["cameleer-rekey-offset"]),
            int(meta["cameleer-rekey-timestamp"]),
            meta.get("cameleer-rekey-key"),
            value,
            tuple((k, v) for k, v in headers if k not in REKEY_HEADERS),
        )

    async def _forward(self, txn: int, source: Source, key: bytes) -> None:
        headers = [
            *source.headers,
            ("cameleer-rekey-topic", source.topic.encode()),
            ("cameleer-rekey-partition", str(source.partition).encode()),
            ("cameleer-rekey-offset", str(source.offset).encode()),
            ("cameleer-rekey-timestamp", str(source.timestamp_ms).encode()),
        ]
        if source.key is not None:
            headers.append(("cameleer-rekey-key", source.key))
        await self.outbox.send(
            txn,
            self.rekey_topic,
            key,
            source.value,
            headers,
            partition=partition_for(key, self.partitions),
            timestamp_ms=source.timestamp_ms,
        )
        self.counts["rekeyed"] += 1

    async def sweep(self, partition: int, limit: int = 10_000) -> int:
        """Flush due stale RUNNINGs and expire due markers of one partition."""
        async with processing_lock:
            now = now_ms()
            keys = self.store.due(partition, now, limit)
            try:
                for key in keys:
                    due, execution_id = parse_index_key(key)
                    stored = self.store.get(partition, state_key(execution_id))
                    decision = merge.sweep_entry(execution_id, due, stored, self.rules, now)
                    await self._apply(partition, decision)
                    self.retention.add(decision.counter)  # issue 10
            except Exception as exc:
                fatal(f"sweeping partition {partition}", exc)
            if line := self.retention.report(now):  # issue 10
                log.info("%s", line)
            self.counts["sweep_entries"] += len(keys)
            return len(keys)

    async def _apply(self, partition: int, decision: Decision) -> None:
        if decision.writes:
            self.store.apply(partition, decision.writes)
        for out in decision.outputs:
            headers = [*out.headers, (ORIGIN, out.origin.encode())]
            await self.outbox.send(partition, self.output_topic, out.key, out.value, headers)
        for dead in decision.dead:
            await self._dead(partition, dead)
        if decision.counter:
            self.counts[decision.counter] += 1
        if decision.note:  # issue 10: e.g. a held RUNNING that reached its retention
            log.info("%s", decision.note)

    async def _dead(self, txn: int, dead: DeadLetter) -> None:
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
        await self.outbox.send(txn, self.dlq_topic, src.key, src.value, headers)
        self.counts[f"dlq_{dead.reason}"] += 1
        log.warning(
            "dead letter %s: %s (%s[%d]@%d)",
            dead.reason,
            dead.detail,
            src.topic,
            src.partition,
            src.offset,
        )
