"""The sweep of every owned state partition, and how far the re-key topic is known complete.

A sweep flushes due stale RUNNINGs, drops what is past its retention and lets
pending re-keyed terminals go (app.engine.processor's `sweep`). A terminal
waits while a RUNNING of its execution may still be on its way through the
re-key topic; the rounds of app.core.rekeybarrier, read here while such
terminals wait, say how far it is known complete (`safe_ms`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from aiokafka import TopicPartition

from app.core.rekeybarrier import RekeyBarrier
from app.engine.ports import Fatal, GroupPort
from app.engine.positions import Positions
from app.engine.processor import Processor

log = logging.getLogger(__name__)


class Sweeper:
    def __init__(
        self,
        processor: Processor,
        positions: Positions,
        counts: Counter[str],
        exactly_once: bool,
        raw_partitions: int,
        fatal: Fatal,
    ) -> None:
        self.processor = processor
        self.positions = positions
        self.counts = counts
        self.exactly_once = exactly_once
        self.raw_partitions = raw_partitions  # the raw topic's, as last seen
        self.port: GroupPort | None = None  # the group's consumer, once attached
        self._fatal = fatal
        self._barrier = RekeyBarrier()
        self._consumed: dict = {}  # re-key TopicPartition -> consumer position handled
        self._pending = False  # re-keyed terminals wait: follow the re-key progress
        self._waiting_mark = 0
        self._catch_up_to: dict = {}  # at_least_once: end offsets at assignment

    def assign(self, ends: dict) -> None:
        """A new assignment; `ends`: its source partitions' end offsets (at_least_once)."""
        self._catch_up_to = {tp: end for tp, end in ends.items() if end is not None}
        self._barrier.reset()
        self._consumed.clear()

    def revoke(self, tps) -> None:
        for tp in tps:
            self._catch_up_to.pop(tp, None)

    def consumed(self, positions: dict) -> None:
        """The consumer's positions of the re-key partitions, up to the records handled."""
        self._consumed.update(positions)

    async def safe_ms(self) -> int:
        """The re-key topic's progress: read afresh while re-keyed terminals wait."""
        if self._pending and self.positions.group is not None and self.port is not None:
            return await self.rekey_progress()
        return self._barrier.safe_ms

    def sweep(self, outbox, safe_ms: int) -> int:
        """One round over the owned state partitions; returns the entries swept."""
        counts = self.counts
        swept = 0
        still_waiting = counts["terminal_still_waiting"]
        for partition in sorted(self.positions.owned_state):
            if self._caught_up(partition):
                try:
                    swept += self.processor.sweep(partition, outbox, safe_ms)
                except Exception as exc:
                    self._fatal(f"sweeping partition {partition}", exc)
        # pending terminals: seen waiting now, or new since the last round
        waiting = counts["terminal_waiting"]
        self._pending = counts["terminal_still_waiting"] > still_waiting or (
            waiting != self._waiting_mark
        )
        self._waiting_mark = waiting
        counts["sweep_rounds"] += 1
        return swept

    def _caught_up(self, partition: int) -> bool:
        # at_least_once: a partition that changed hands may hold state older than
        # records already emitted; sweeping it before re-reading them could emit a
        # RUNNING after its terminal. Exactly-once state is exact.
        if self.exactly_once:
            return True
        positions = self.positions
        return all(
            positions.get(tp) >= end
            for tp, end in self._catch_up_to.items()
            if positions.state_partition(tp) == partition
        )

    async def rekey_progress(self) -> int:
        """One round of app.core.rekeybarrier: raw ends, then committed, then re-key ends.

        The raw topic's partition count is read afresh each round: a RUNNING may wait
        on a partition added since, which no worker owns yet (its committed offset,
        none, holds the barrier back until an owner has handled it).

        The re-key ends are the high watermarks, not the last stable offsets: another
        worker's transaction left open on a re-key partition (killed mid-commit, until
        its restart or the transaction timeout ends it) holds the last stable offset at
        its first record, below re-key records committed since with the raw offsets
        just read. Read up to there only, the re-key topic would pass for complete
        while a RUNNING committed behind that transaction is not readable yet.
        """
        raw_topic = self.positions.raw_topic
        ours = [tp for tp in self.positions.assigned if tp.topic == self.positions.rekey_topic]
        try:
            taken_ms = int(time.time() * 1000)
            count = await self.port.partition_count(raw_topic)
            if count > self.raw_partitions:
                log.info("raw topic %s has grown to %d partitions", raw_topic, count)
            self.raw_partitions = max(self.raw_partitions, count)
            raw = [TopicPartition(raw_topic, p) for p in range(self.raw_partitions)]
            raw_ends = await self.port.end_offsets(raw)
            committed = await self.port.stable_offsets(raw)
            rekey_ends = await self.port.high_watermarks(ours)
        except Exception as exc:  # a later round tries again; the grace bounds the wait
            log.warning("re-key progress not read: %r", exc)
            return self._barrier.safe_ms
        return self._barrier.observe(
            taken_ms,
            {tp.partition: offset for tp, offset in raw_ends.items()},
            {tp.partition: offset for tp, offset in committed.items()},
            rekey_ends,
            self._consumed,
        )
