"""Faust's consumer, handing whole fetches to the batch engine.

Upstream (faust-streaming 0.15.3, `Consumer` of faust/transport/consumer.py and
faust/transport/drivers/aiokafka.py):
- `_drain_messages(fetcher)`: replaced. Faust's `Fetcher` service runs it as the
  consumer's fetch loop; it reads the consumer's `_stopped`, `flow_active`,
  `can_resume_flow`, `_get_active_partitions()`, `consumer_stopped_errors`, and
  the fetcher's `_stopped`.
- `perform_seek()`: replaced (Faust: `seek_to_committed`).
- `on_partitions_revoked(revoked)`, `on_partitions_assigned(assigned,
  generation_id)`, `on_stop()`: extended.
- `highwaters(*partitions)`: extended (Faust's recovery asks it for the end
  offsets it reads the changelog partitions to).
- `verify_event_path(now, tp)`: replaced by nothing.
- `_new_consumer_thread()`: returns app.overrides.consumer_thread's thread.
- `_commit(offsets)`: called for at_least_once commits.

Why:
- Faust's drain loop turns every fetched record into a message, a task
  (`wait_first`) and a stream-queue hop, and at a rebalance it drops and reads
  again records in flight. This loop hands each fetch to the engine whole, and
  the changelog records of each fetch to app.overrides.changelog_restore. A fetch
  that returns during a rebalance is held, not dropped: the consumer's position
  is past it, and a changelog record dropped there leaves a gap that a standby
  goes on past. Each fetch carries the epochs of the seeks (source partitions,
  changelog partitions) its records follow: records fetched before a seek are
  dropped, since the seek reads them again.
- `seek_to_committed` leaves a partition without a committed offset where it was,
  and reads an offset that a completing transaction is about to move: the source
  partitions are sought to the stable committed offsets (app.overrides
  .stable_offsets), or to their start, and the engine gets them with the group
  generation they were assigned in.
- The engine commits what it handled before partitions go and before the worker
  stops, and starts its transactional producer before Faust's table recovery: its
  transactional id fences the worker's previous incarnation and aborts that one's
  open transaction, which the recovery would otherwise wait on until the
  transaction timeout.
- Faust's recovery end offsets in a transaction come from a stale cache, then it
  waits for a commit marker no consumer receives; and a zombie's open transaction
  makes its consistency check crash a worker whose standby is past the stable
  offset. They are asked of the broker (app.kafka.probes): up to the last
  committed record, and a standby's up to the log's end.
- Faust warns when its stream has not taken a partition's records for a while;
  records no longer pass through a Faust stream.

Checked by tests/unit/test_upstream.py (the rows and tests of `consumer`).
"""

from __future__ import annotations

import asyncio
import time

from faust.transport.drivers.aiokafka import Consumer

from app.engine.engine import Engine, fatal
from app.kafka.connection import Connection
from app.kafka.probes import after_last_records, ends_without_open_transactions, standby_ends
from app.overrides.changelog_restore import ChangelogRestore
from app.overrides.consumer_thread import MergerConsumerThread

# Records one fetch hands on when only changelog partitions are read (a restore): one
# RocksDB write batch per partition each, about 10-20 ms of the event loop.
RESTORE_BATCH_MAX = 20_000


class MergerConsumer(Consumer):
    def __init__(self, *args, engine: Engine, connection: Connection, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._engine = engine
        self._connection = connection  # for the short reads of app.kafka.probes
        self.counts = engine.counts  # restored_records, standby_records (/stats)
        self._changelog = ChangelogRestore(self.app, self.counts)
        engine.attach(self)

    def _new_consumer_thread(self):
        return MergerConsumerThread(self, loop=self.loop, beacon=self.beacon)

    # -- GroupPort, for the engine

    async def commit_offsets(self, offsets: dict) -> bool:
        return await self._commit(offsets)

    async def end_offsets(self, tps) -> dict:
        return await self._thread.call_thread(self._thread.end_offsets, list(tps))

    async def stable_offsets(self, tps) -> dict:
        return await self._thread.call_thread(self._thread.stable_offsets, list(tps))

    async def high_watermarks(self, tps) -> dict:
        return await self._thread.call_thread(self._thread.high_watermarks, list(tps))

    async def partition_count(self, topic: str) -> int:
        return await self._thread.call_thread(self._thread.partition_count, topic)

    def seconds_since_heartbeat(self) -> float:
        return time.monotonic() - self._thread.last_heartbeat_ok

    # -- for the assignor, on the consumer's thread

    def request_rejoin(self) -> None:
        self._thread.request_rejoin()

    # -- the batch path

    async def _drain_messages(self, fetcher) -> None:
        """Fetch, and hand each fetch to the engine whole (Faust's loop: per record)."""
        sources = self._engine.source_topics
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set  # noqa: SLF001 as Faust's own loop reads it
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                if not self.flow_active:
                    await self.wait(self.can_resume_flow)
                    continue
                active = self._get_active_partitions()
                if not active:
                    await self.sleep(0.1)  # nothing assigned or all paused: rebalancing
                    continue
                asked = time.monotonic()
                # only changelog partitions fetched (a restore: the source partitions
                # are paused): larger batches, each written in one RocksDB write batch
                restoring = not any(tp.topic in sources for tp in active)
                records, epoch, changelog_epoch, consumed = await self._thread.call_thread(
                    self._thread.fetch_batch,
                    active,
                    1.0,
                    self._engine.rekey_topic,
                    RESTORE_BATCH_MAX if restoring else None,
                )
                self._engine.seconds["fetch_wait"] += time.monotonic() - asked
                if not records:
                    continue
                if not self.flow_active:
                    # A rebalance began. The batch is held, not dropped: the consumer's
                    # position is past it, and a changelog record dropped here is never
                    # read again unless a recovery seeks back before it (a standby would
                    # go on past the gap). Source records are judged by their seek epoch.
                    await self.wait(self.can_resume_flow)
                    if consumer_stopped() or fetcher_stopped():
                        break
                # changelog records: delivered unless a recovery has sought since they
                # were fetched (it reads them again from where it sought)
                fresh = self._thread.changelog_epoch == changelog_epoch
                assigned = self.assignment() if fresh else ()
                batch = {}
                for tp, recs in records.items():
                    if tp.topic in sources:
                        batch[tp] = recs
                    elif fresh and tp in assigned:
                        self._apply_changelog(tp, recs)
                if batch or consumed:
                    # shielded: a stopping fetcher must not cut a batch in half
                    await asyncio.shield(self._engine.handle(batch, epoch, consumed))
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise

    def _apply_changelog(self, tp, records: list) -> None:
        """A fetch's changelog records of one partition (app.overrides.changelog_restore).

        Records of a suspended flow are left: the next recovery reads them again from
        the offset RocksDB holds.
        """
        if self.flow_active and self.app.flow_control.is_active():
            self._changelog.apply(tp, records)

    async def perform_seek(self) -> None:
        sources = [tp for tp in self.assignment() if tp.topic in self._engine.source_topics]
        if not sources:
            return
        positions, group, epoch = await self._thread.call_thread(
            self._thread.seek_to_stable_offsets, sources
        )
        await self._engine.on_assigned(positions, group, epoch)

    async def on_partitions_revoked(self, revoked) -> None:
        self._changelog.forget()
        await super().on_partitions_revoked(revoked)
        await self._engine.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned, generation_id: int = 0) -> None:
        self._engine.counts["rebalances"] += 1
        # before any recovery or record: what was handled before was committed at
        # the revocation, so stopping here loses nothing
        problem = self._engine.layout_problem(self.app.assignor.assigned_actives())
        if problem:
            fatal("refusing the assignment", RuntimeError(problem))
        # The producer first: its transactional id fences the previous incarnation of
        # this worker and aborts its open transaction, which the table recovery that
        # follows would otherwise wait on until the transaction timeout (a static
        # member restarted within the session timeout gets here at once).
        await self._engine.start()
        await super().on_partitions_assigned(assigned, generation_id)

    async def on_stop(self) -> None:
        await self._engine.stop()
        await super().on_stop()

    def verify_event_path(self, now: float, tp) -> None:
        return None  # records no longer pass through a Faust stream

    async def highwaters(self, *partitions):
        ends = await super().highwaters(*partitions)
        if not self.in_transaction:
            return ends
        # the partitions this worker now owns: read them only once no previous
        # owner's transaction is open there (app.kafka.probes); standbys are read as
        # they are, and checked against the log's end (app.kafka.probes.standby_ends)
        actives = set(self.app.assignor.assigned_actives())
        owned = [tp for tp in partitions if tp in actives]
        if owned:
            ends = {**ends, **await ends_without_open_transactions(self._connection, owned)}
        ends = await after_last_records(self._connection, ends)
        standbys = {tp: end for tp, end in ends.items() if tp not in actives}
        if standbys:
            ends = {**ends, **await standby_ends(self._connection, standbys)}
        return ends
