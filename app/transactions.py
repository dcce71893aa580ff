"""Exactly-once glue: one Kafka transaction per source partition, committed atomically.

Faust's exactly_once mode already keeps one transactional producer per assigned
partition (KIP-98 style fencing by transactional.id). What it does not do, and
what this module adds:

0. One transactional id per source partition, of our own naming (Faust's
   depends on topic-group numbers that can change between assignments).
1. Everything produced while handling a record of source partition p (output,
   DLQ, changelog, re-key records) goes through p's producer, whatever partition
   it is written to (`send_record`, straight to aiokafka). Faust picks the
   producer by the destination partition, which splits one record's effects
   across transactions as soon as a record is re-keyed.
2. A commit waits for every record of its transaction to be acknowledged, and
   a failed send fails the commit: nothing is committed past a lost write.
3. A commit never cuts a record in half: the processor holds `processing_lock`
   while it handles a batch of records, and the commit takes the same lock, so a
   transaction holds every write of the records whose offsets it commits and
   none of a record it does not.
4. Partitions with writes but no new offsets (the stale sweep) are committed too.
5. Recovery after a rebalance reads the changelog up to its last committed record,
   asked of the broker (Faust used a cached value that is empty right after
   assignment, then waited for the commit marker after the last record).
6. at_least_once commits the same write-behind without a transaction
   (`commit_plain`).
7. The local state follows the commit: `StateStore.committed()` after a commit,
   `StateStore.discard()` when a partition is revoked (its open transaction will
   be aborted by the fencing of the next owner).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import defaultdict
from collections.abc import Mapping

from aiokafka.errors import ProducerFenced
from faust.transport.consumer import TransactionManager
from faust.transport.drivers.aiokafka import (
    AIOKafkaConsumerThread,
    Consumer,
    Transport,
)
from faust.types import TP

from .probes import after_last_records

log = logging.getLogger(__name__)

processing_lock = asyncio.Lock()

EXIT_FATAL = 70


def fatal(what: str, exc: BaseException) -> None:
    """Stop the process at once, as a kill would, without committing anything.

    A record whose handling failed half-way has left part of its effects in the
    open transaction; a graceful stop would commit them. Exiting aborts that
    transaction (the next producer with its id fences it) and the next owner of
    the partition handles the record again. The orchestrator restarts us.
    """
    log.critical("%s: %r; exiting without commit", what, exc, exc_info=exc)
    logging.shutdown()
    os._exit(EXIT_FATAL)


async def _in_transaction(producer) -> None:
    # Faust begins transactions at assignment and swallows failures there; a
    # producer found outside a transaction is put back in one before use.
    if not producer._txn_manager.is_in_transaction():
        await producer.begin_transaction()


class MergerTransactionManager(TransactionManager):
    store = None  # the StateStore, set by the worker
    outbox = None  # the Outbox, set by the worker (at_least_once commits flush it)
    handled: dict = {}  # TopicPartition -> last offset fully handled, kept by the processor
    source_topics: frozenset[str] = frozenset()  # raw and re-key topics, set by the worker

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._committed: dict = {}  # TopicPartition -> offset committed by us
        self._inflight: dict[int, list[asyncio.Future]] = defaultdict(list)
        self._producers_lock = asyncio.Lock()
        self._tid_by_partition: dict[int, str] = {}

    def _tid(self, partition: int) -> str:
        # Our own naming, one id per source partition. Faust's names include its
        # topic-group number, which is recomputed at each assignment and can change:
        # records sent under one id and offsets committed under another split a
        # transaction in two (seen in the chaos run: outputs aborted, offsets kept).
        tid = self._tid_by_partition.get(partition)
        if tid is None:  # once per partition: send_record asks for every record
            tid = self._tid_by_partition[partition] = f"{self.app.conf.id}-merge-{partition}"
        return tid

    def _tids(self, tps) -> set[str]:
        return {self._tid(tp.partition) for tp in tps if tp.topic in self.source_topics}

    async def on_rebalance(self, assigned, revoked, newly_assigned) -> None:
        async with self._producers_lock:  # one rebalance at a time
            keep = self._tids(assigned)
            for tid in sorted(self._tids(revoked) - keep):
                await self.producer.stop_transaction(tid)
            for tid in sorted(keep):
                await self._start_producer(tid)

    async def _start_producer(self, tid: str) -> None:
        # Faust's begin_transaction creates the producer before it has a lock: two
        # callers at once make two producers for one id, the second fencing the
        # first and aborting its transaction. Created once here, under a lock.
        producers = self.producer._transaction_producers
        producer = producers.get(tid)
        if producer is None:
            producer = self.producer._new_producer(transactional_id=tid)
            await producer.start()
            producers[tid] = producer
            self.producer._trn_locks[tid] = asyncio.Lock()
            log.info("transactional producer %s started", tid)
        async with self.producer._trn_locks[tid]:
            await _in_transaction(producer)

    async def send(
        self, topic, key, value, partition, timestamp, headers, *, transactional_id=None
    ):
        # Faust's own sends (our records go through send_record): into the
        # transaction of the partition they are written to.
        p = self.consumer.key_partition(topic, key, partition)
        tid = self._tid(p)
        producer = self.producer._transaction_producers.get(tid)
        if producer is not None:
            async with self.producer._trn_locks[tid]:
                await _in_transaction(producer)
        fut = await self.producer.send(
            topic, key, value, partition, timestamp, headers, transactional_id=tid
        )
        self._inflight[p].append(fut)
        return fut

    async def send_record(
        self,
        source: int,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers=None,
        timestamp_ms: int | None = None,
    ) -> asyncio.Future:
        """The hot path: one record into source partition `source`'s open transaction.

        Straight to its aiokafka producer (Faust's Topic.send costs more than the
        merge itself); returns the delivery future, which the commit awaits.
        """
        tid = self._tid(source)
        producer = self.producer._transaction_producers.get(tid)
        if producer is None:  # the partition was revoked under us: nothing may be sent for it
            raise RuntimeError(f"no transaction for source partition {source}")
        if not producer._txn_manager.is_in_transaction():
            async with self.producer._trn_locks[tid]:
                await _in_transaction(producer)
        fut = await producer.send(
            topic,
            value=value,
            key=key,
            partition=partition,
            timestamp_ms=timestamp_ms,
            headers=headers,
        )
        self._inflight[source].append(fut)
        return fut

    async def commit(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        # Faust's `offsets` (acked events) only trigger us: we commit the offsets of
        # the records we fully handled, which is exactly what the transaction holds.
        async with processing_lock:
            return await self._commit_locked(start_new_transaction)

    def _pending(self) -> dict[int, dict[TP, int]]:
        by_partition: dict[int, dict[TP, int]] = defaultdict(dict)
        for tp, offset in self.handled.items():
            if offset + 1 > self._committed.get(tp, -1):
                by_partition[tp.partition][tp] = offset + 1
        if self.store is not None:
            for partition in self.store.dirty_partitions():
                by_partition.setdefault(partition, {})
        for partition in self._inflight:
            by_partition.setdefault(partition, {})
        return by_partition

    async def _commit_locked(self, start_new_transaction: bool) -> bool:
        pending = self._pending()
        # Each partition is its own transaction: commit them side by side, so a
        # commit costs one round of broker round trips, not one per partition.
        done = await asyncio.gather(
            *(
                self._commit_partition(partition, tp_offsets, start_new_transaction)
                for partition, tp_offsets in sorted(pending.items())
            )
        )
        committed = [p for p, ok in zip(sorted(pending), done, strict=True) if ok]
        if self.store is not None:
            self.store.committed(committed)
        if os.environ.get("CAMELEER_TRACE_COMMITS"):
            log.info("committed %s", {p: dict(pending[p]) for p in committed})
        return bool(committed)

    async def _commit_partition(
        self, partition: int, tp_offsets: dict[TP, int], start_new_transaction: bool
    ) -> bool:
        tid = self._tid(partition)
        producer = self.producer._transaction_producers.get(tid)
        if producer is None:
            log.warning("no open transaction for partition %d (revoked?)", partition)
            return False
        try:
            async with self.producer._trn_locks[tid]:
                await _in_transaction(producer)
                if self.store is not None:
                    await self.store.send_changelog(
                        partition, lambda t, k, v, p: self._send_changelog(producer, t, k, v, p)
                    )
                # Every record of the transaction must be written before its offsets
                # commit: a send that failed (broker restart, expired batch) must not
                # be committed past. One failure aborts the whole transaction.
                sent = self._inflight.pop(partition, [])
                if sent:
                    # send lingering batches now (what aiokafka's commit does too)
                    await producer._message_accumulator.flush_for_commit()
                    await asyncio.gather(*sent)
                if tp_offsets:
                    await producer.send_offsets_to_transaction(tp_offsets, self.app.conf.id)
                await producer.commit_transaction()
                self._committed.update(tp_offsets)
                if start_new_transaction:
                    await producer.begin_transaction()
            return True
        except ProducerFenced as exc:
            fatal(f"producer for partition {partition} fenced: another worker owns it", exc)
        except Exception as exc:
            fatal(f"commit of partition {partition} failed", exc)
        return False

    async def _send_changelog(self, producer, topic, key, value, partition) -> asyncio.Future:
        fut = await producer.send(topic, value=value, key=key, partition=partition)
        self._inflight[partition].append(fut)
        return fut

    async def on_partitions_revoked(self, revoked) -> None:
        # Commit what was handled while the producers still own their partitions.
        # The eager protocol revokes every partition at each rebalance, also those
        # that come straight back: discarding their work here would leave it in the
        # open transaction, to be committed later beside its own reprocessing.
        await super().on_partitions_revoked(revoked)
        async with processing_lock:
            if self.app.in_transaction:
                await self._commit_locked(start_new_transaction=True)
            else:
                await self._commit_plain_locked()
            for tp in revoked:
                self.handled.pop(tp, None)
                self._committed.pop(tp, None)
                self._inflight.pop(tp.partition, None)
            if self.store is not None:  # anything left was not committed: it never happened
                self.store.discard({tp.partition for tp in revoked})

    async def commit_dirty(self) -> None:
        """Commit partitions that only the sweep wrote to."""
        if self.store is not None and self.store.dirty_partitions():
            if self.app.in_transaction:
                await self.commit({})
            else:
                await self.commit_plain()

    # ---- at_least_once: the same write-behind, without a transaction -----------------

    async def commit_plain(self) -> bool:
        """Outputs first, then the changelog, then the offsets, then local RocksDB.

        A crash anywhere in between repeats records, never loses one: the state
        never gets ahead of the outputs it stands for (a marker saved before its
        terminal record was written would drop that record on replay).
        """
        async with processing_lock:
            return await self._commit_plain_locked()

    async def _commit_plain_locked(self) -> bool:
        pending = self._pending()
        offsets = {tp: offset for tps in pending.values() for tp, offset in tps.items()}
        try:
            await self.outbox.flush()
            sent: list[asyncio.Future] = []

            async def send(topic, key, value, partition):
                fut = await self.producer.send(topic, key, value, partition, None, None)
                sent.append(fut)
                return fut

            if self.store is not None:
                for partition in sorted(pending):
                    await self.store.send_changelog(partition, send)
            if sent:
                await asyncio.gather(*sent)
            if offsets and not await self.consumer._commit(offsets):
                # not committed (e.g. a rebalance under way): the records are read
                # again; their outputs went out already, so they repeat exactly
                log.warning("offset commit refused: %s will be read again", sorted(offsets))
                offsets = {}
        except Exception as exc:
            fatal("at_least_once commit failed", exc)
        self._committed.update(offsets)
        self._inflight.clear()
        if self.store is not None:
            self.store.committed(sorted(pending))
        return bool(pending)


class MergerConsumerThread(AIOKafkaConsumerThread):
    async def _highwaters(self, partitions):
        # Faust answers from the last fetch's last-stable-offset when in a transaction:
        # None for a partition not fetched yet, i.e. right after every rebalance. Its
        # recovery then takes the changelog as empty: it raises ConsistencyError, or
        # skips what the previous owner wrote. Ask the broker (ListOffsets with
        # read_committed gives the last stable offset).
        return await self._ensure_consumer().end_offsets(partitions)


class MergerConsumer(Consumer):
    resume_offsets: dict = {}  # TopicPartition -> where it resumed after the last assignment

    async def highwaters(self, *partitions):
        ends = await super().highwaters(*partitions)
        if not self.in_transaction:
            return ends
        return await after_last_records(self.app.connection, ends)

    def _new_consumer_thread(self):
        return MergerConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _commit_offsets(self, offsets, start_new_transaction: bool = True) -> bool:
        # Faust's `offsets` come from its acks, which run ahead of what was handled
        # after a rebalance (acks of records buffered before it): at_least_once commits
        # what was handled, like the transactions do.
        if self.in_transaction:
            return await super()._commit_offsets(offsets, start_new_transaction)
        return await self.transactions.commit_plain()

    async def perform_seek(self) -> None:
        """Seek every assigned partition to the group's committed offset, also when there is none.

        Faust clears its stream buffers at a rebalance and relies on this seek to read
        the dropped records again. aiokafka's seek_to_committed only seeks partitions
        whose committed offset is above 0: a source partition nobody committed yet
        (the re-key topic, early on) kept its fetch position, and the records dropped
        from the buffers were never read (chaos seed 12: executions lost through the
        re-key topic). Those partitions go back to their first offset, as
        auto_offset_reset=earliest promises.
        """
        committed = await self.seek_to_committed()
        sources = MergerTransactionManager.source_topics
        unset = sorted(tp for tp, offset in committed.items() if not offset and tp.topic in sources)
        if unset:
            await self._thread.seek_to_beginning(*unset)
        self._read_offset.update(
            {tp: offset if offset else None for tp, offset in committed.items()}
        )
        self._committed_offset.update({tp: offset for tp, offset in committed.items() if offset})
        self.resume_offsets = {tp: offset or 0 for tp, offset in committed.items()}
        log.info(
            "source partitions resume at %s",
            {
                f"{tp.topic}[{tp.partition}]": committed[tp] or 0
                for tp in sorted(committed)
                if tp.topic in sources
            },
        )


class MergerTransport(Transport):
    Consumer = MergerConsumer
    TransactionManager = MergerTransactionManager
