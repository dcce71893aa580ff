"""Every touch of Faust's and aiokafka's internals, in one module, each with its reason.

Pinned: faust-streaming 0.15.x and aiokafka 0.12-0.14 (pyproject.toml). What is
replaced, and why (docs/design.md):

Faust
- `MergerConsumer._drain_messages`: Faust's drain loop turns every fetched
  record into a message, a task (`wait_first`) and a stream-queue hop, and its
  rebalance handling skipped and redelivered records (chaos runs).
  Ours hands each fetch to the engine as whole batches, and writes its changelog
  records (table recovery and standbys) to RocksDB as whole batches.
- `MergerConsumer.perform_seek`: seeks source partitions to the group's STABLE
  committed offsets (OffsetFetch v7, KIP-447), or to their start when none
  (aiokafka's seek_to_committed skipped those), and hands the assignment to
  the engine with the group generation it belongs to.
- `MergerConsumer.on_partitions_revoked` / `on_stop`: the engine commits what
  it handled before partitions go and before the worker stops.
- `MergerConsumer.highwaters` / `MergerConsumerThread._highwaters`: recovery
  end offsets asked of the broker, up to the last committed record (Faust
  used a stale cache, then waited for a commit marker no consumer receives);
  a standby's, up to the log's end (a zombie's open transaction made Faust's
  consistency check crash a worker whose standby was past the stable offset).
- `MergerConsumer.on_partitions_assigned`: counts rebalances (app.ops.metrics), and
  stops the worker when the assignment cannot be worked (`Engine.layout_problem`).
- `MergerAssignor`: raw partition p goes to the owner of state partition
  p % (state partitions). Faust co-partitions topics of equal partition counts
  only: once the raw topic has grown, it would spread the raw partitions apart
  from the re-key and changelog partitions their records are merged in.
  starts the engine's producer before Faust's table recovery (see there).
- `static_heartbeat`: a static member's heartbeat carries its instance id
  (app.kafka.kip345); a worker whose instance id was taken over exits.
- `keep_changelog_queue_on_resume`: Faust empties its changelog queue at every
  `flow_control.resume()`, also after the standbys were sought and resumed,
  when their records queued meanwhile are past the consumer's position: a
  standby went on past the gap (chaos, seed 31). Only a rebalance's clear stays.
- `MergerTransactionManager`: Faust's exactly_once keeps one transactional
  producer per partition; the engine has one per worker, so Faust's is inert.
- `MergerConsumer._apply_changelog`: changelog records (restore and standbys)
  are written to RocksDB per fetched batch, one write batch each with their
  offset, instead of through Faust's changelog queue one record at a time; the
  recovery's offsets and end signal are Faust's own.
- `derive_on_recovery`: Faust's own changelog replay (`Store.apply_changelog_batch`)
  writes as the batch path above does, with the local indexes derived from the
  states (app.state.statestore.replay).
- `MergerAssignor`: raw partitions follow their state partitions, and an
  assignment made for an older address of this worker (a static member restarted
  under a new one) is taken instead of failing Faust's check.
- `MergerApp`: the transport and assignor above, and the engine passed in.

aiokafka
- `EosProducer`: its Sender commits transaction offsets with TxnOffsetCommit v3
  (generation and member id, app.kafka.kip447) instead of v0 (group id only).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka import errors as Errors
from aiokafka.client import CoordinationType
from aiokafka.producer.sender import Sender, TxnOffsetCommitHandler
from aiokafka.producer.transaction_manager import TransactionState
from faust.assignor.client_assignment import ClientMetadata
from faust.assignor.partition_assignor import PartitionAssignor
from faust.transport.consumer import TransactionManager
from faust.transport.drivers.aiokafka import (
    AIOKafkaConsumerThread,
    Consumer,
    Transport,
)

from app.engine.engine import Engine, fatal
from app.kafka import kip345, kip447
from app.kafka.connection import Connection
from app.kafka.kip447 import GroupMetadata
from app.kafka.probes import after_last_records, ends_without_open_transactions, standby_ends
from app.state.statestore import has_held_index, replay

log = logging.getLogger(__name__)

FETCH_MAX_WAIT_MS = 20  # longest a fetch waits at the broker for data (see below)
# Records one fetch hands on when only changelog partitions are read (a restore): one
# RocksDB write batch per partition each, about 10-20 ms of the event loop.
RESTORE_BATCH_MAX = 20_000
# Bytes per partition and fetch while restoring (the processing's 1 MB otherwise): held
# RUNNINGs are about 800 bytes, and a 1 MB fetch of them only 1,300 records.
RESTORE_FETCH_BYTES = 8 * 1024**2


# ---- aiokafka: TxnOffsetCommit v3 -----------------------------------------------------


class ZombieFenced(Errors.KafkaError):
    """The group coordinator refused this worker's offsets: it no longer owns them."""


# Error codes that mean "not the member owning these partitions any more".
_FENCING = {
    Errors.IllegalGenerationError.errno,
    Errors.UnknownMemberIdError.errno,
    Errors.RebalanceInProgressError.errno,
    82,  # FENCED_INSTANCE_ID (static membership)
}


class _TxnOffsetCommitV3Handler(TxnOffsetCommitHandler):
    """aiokafka's handler, sending v3 and failing the transaction of a zombie."""

    def __init__(self, sender, offsets, group_id, group: GroupMetadata) -> None:
        super().__init__(sender, offsets, group_id)
        self._group = group

    def create_request(self):
        txn_manager = self._sender._txn_manager
        by_topic = collections.defaultdict(list)
        for tp, offset in sorted(self._offsets.items()):
            by_topic[tp.topic].append((tp.partition, offset.offset, offset.metadata))
        return kip447.TxnOffsetCommitRequest(
            txn_manager.transactional_id,
            txn_manager.producer_id,
            txn_manager.producer_epoch,
            self._group,
            dict(by_topic),
        )

    def handle_response(self, resp):
        rows = kip447.txn_offset_commit_errors(resp)
        fenced = [(t, p, code) for t, p, code in rows if code in _FENCING]
        if fenced:
            topic, partition, code = fenced[0]
            _fail_abortable(
                self._sender._txn_manager,
                ZombieFenced(
                    f"offsets of {topic}[{partition}] refused with "
                    f"{Errors.for_code(code).__name__}: generation "
                    f"{self._group.generation_id} of member {self._group.member_id} is over"
                ),
            )
            return None
        # everything else as aiokafka handles v0 responses: (topic, [(partition, error)])
        shaped = collections.defaultdict(list)
        for topic, partition, code in rows:
            shaped[topic].append((partition, code))
        return super().handle_response(_V0Shape(list(shaped.items())))


def _fail_abortable(txn_manager, exc: Exception) -> None:
    """Fail the transaction so that it can only be aborted, and abort really aborts.

    aiokafka's own `error_transaction` forgets the partitions already added to the
    transaction; `abort_transaction` then sends no EndTxn, the broker keeps the
    transaction open, and the next commit makes its records visible (seen in
    tests/integration/test_fencing.py). Here the partitions are kept.
    """
    txn_manager._transition_to(TransactionState.ABORTABLE_ERROR)
    for _, _, fut in txn_manager._pending_txn_offsets:
        if not fut.done():
            fut.set_exception(exc)
    txn_manager._pending_txn_offsets.clear()
    if not txn_manager._transaction_waiter.done():
        txn_manager._transaction_waiter.set_exception(exc)


class _V0Shape:
    def __init__(self, errors) -> None:
        self.errors = errors


class _Kip447Sender(Sender):
    group: GroupMetadata | None = None  # of the offsets being committed; set by EosProducer

    async def _do_txn_offset_commit(self, offsets, group_id):
        # aiokafka's own method (sender.py), with the v3 handler
        if not offsets:
            return
        try:
            node_id = await self._find_coordinator(CoordinationType.GROUP, group_id)
        except Errors.GroupAuthorizationFailedError as exc:
            self._txn_manager.error_transaction(exc)
            return
        handler = _TxnOffsetCommitV3Handler(self, offsets, group_id, self.group)
        await handler.do(node_id)


class EosProducer(AIOKafkaProducer):
    """A transactional producer whose offsets carry the group generation (KIP-447)."""

    def __init__(self, **config) -> None:
        super().__init__(**config)
        # aiokafka builds its Sender in __init__, with no way to choose the class:
        # rebuilt with the same arguments, the v3 handler being the only change.
        old = self._sender
        self._sender = _Kip447Sender(
            self.client,
            acks=old._acks,
            txn_manager=self._txn_manager,
            retry_backoff_ms=int(old._retry_backoff * 1000),
            message_accumulator=self._message_accumulator,
            request_timeout_ms=old._request_timeout_ms,
        )

    async def send_offsets_to_transaction(self, offsets, group: GroupMetadata):
        self._sender.group = group
        await super().send_offsets_to_transaction(offsets, group.group_id)


# ---- aiokafka: OffsetFetch v7 with require_stable --------------------------------------

_RETRIABLE_GROUP_ERRORS = {
    Errors.GroupLoadInProgressError.errno,
    Errors.GroupCoordinatorNotAvailableError.errno,
    Errors.NotCoordinatorForGroupError.errno,
}


async def fetch_stable_offsets(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], timeout: float = 60.0
) -> dict[TopicPartition, int | None]:
    """The group's committed offsets, once no transaction holding offsets is completing.

    On the consumer's own thread. Uses its group coordinator's connection
    (`_coordinator`: aiokafka keeps it there and offers no public send).
    """
    coordinator = consumer._coordinator
    by_topic = collections.defaultdict(list)
    for tp in tps:
        by_topic[tp.topic].append(tp.partition)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    waits = 0
    while True:
        await coordinator.ensure_coordinator_known()
        request = kip447.StableOffsetFetchRequest(coordinator.group_id, dict(by_topic))
        try:
            response = await coordinator._send_req(request)
        except Errors.KafkaError as exc:
            if not exc.retriable or loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)  # retry backoff
            continue
        group_error, rows = kip447.offset_fetch_results(response)
        codes = {code for *_, code in rows} | {group_error}
        if codes <= {0}:
            if waits:
                log.info("stable offsets after %d waits for completing transactions", waits)
            return {TopicPartition(t, p): (o if o >= 0 else None) for t, p, o, _ in rows}
        retriable = codes - {0} <= _RETRIABLE_GROUP_ERRORS | {kip447.UNSTABLE_OFFSET_COMMIT}
        if not retriable or loop.time() > deadline:
            raise Errors.for_code(max(codes))(f"offset fetch for {sorted(by_topic)}: {codes}")
        if codes & {Errors.NotCoordinatorForGroupError.errno}:
            coordinator.coordinator_dead()
        waits += 1
        await asyncio.sleep(0.05)  # the previous owner's transaction is completing


# ---- Faust: consumer, transaction manager, transport, app -------------------------------


class MergerConsumerThread(AIOKafkaConsumerThread):
    last_heartbeat_ok = 0.0  # time.monotonic() of the group's last accepted heartbeat

    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        # Faust builds it with fetch_max_wait_ms=1500. aiokafka keeps one fetch in
        # flight per broker, for the partitions whose buffer is empty: when those are
        # the quiet ones (re-key partitions), the broker holds the fetch for the full
        # wait while the busy raw partitions, drained meanwhile, cannot be fetched
        # (bench: the event loop waited for records 60% of the time, the worker used
        # 40% of a core). Set before start(), which hands it to the fetcher.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer

    async def on_start(self) -> None:
        await super().on_start()
        self.last_heartbeat_ok = time.monotonic()
        # aiokafka keeps the time of the last accepted heartbeat in a local variable
        # of its heartbeat task; at_least_once needs it (a worker that missed its
        # session may have lost its partitions: it must not produce), so the
        # coordinator's heartbeat call is wrapped to note it
        coordinator = self._consumer._coordinator
        do_heartbeat = coordinator._do_heartbeat
        if coordinator._group_instance_id is not None:
            do_heartbeat = functools.partial(static_heartbeat, coordinator)

        async def _noted_heartbeat():
            ok = await do_heartbeat()
            if ok:
                self.last_heartbeat_ok = time.monotonic()
            return ok

        coordinator._do_heartbeat = _noted_heartbeat

    async def _highwaters(self, partitions):
        # Faust answers from the last fetch's last-stable-offset when in a transaction:
        # None for a partition not fetched yet, i.e. right after every rebalance. Its
        # recovery then takes the changelog as empty. Ask the broker (ListOffsets with
        # read_committed gives the last stable offset).
        return await self._ensure_consumer().end_offsets(partitions)

    # Counts the seeks of source partitions. A fetch reads it when it returns, on this
    # thread, so each batch says which seek its records follow: records fetched before
    # a seek, even if handed over after it, come from the positions it replaced.
    seek_epoch = 0

    async def seek_to_stable_offsets(self, tps) -> tuple[dict, GroupMetadata, int]:
        """Seek to the stable committed offsets (or the start); positions, group, epoch."""
        consumer = self._ensure_consumer()
        atps = [TopicPartition(tp.topic, tp.partition) for tp in tps]
        committed = await fetch_stable_offsets(consumer, atps)
        unset = [tp for tp in atps if committed.get(tp) is None]
        starts = await consumer.beginning_offsets(unset) if unset else {}
        positions = {tp: starts[tp] if tp in starts else committed[tp] for tp in atps}
        # no await from here to the epoch: a fetch returning in between would carry
        # records of the new positions under the old epoch
        for tp, offset in positions.items():
            consumer.seek(tp, offset)  # drops what was fetched for tp before
        self.seek_epoch += 1
        self.last_heartbeat_ok = time.monotonic()  # just joined: a member now
        c = consumer._coordinator  # the generation these partitions were assigned in
        group = GroupMetadata(c.group_id, c.generation, c.member_id, c._group_instance_id)
        return positions, group, self.seek_epoch

    changelog_epoch = 0  # the same, for the recovery's seeks of changelog partitions
    _fetch_bytes: int | None = None  # the consumer's own per-partition fetch size

    async def _seek_wait(self, consumer, partitions) -> None:
        # Faust's own (faust/transport/drivers/aiokafka.py), with the changelog epoch
        # counted right after the seeks, before anything awaits
        for tp, offset in partitions.items():
            consumer.seek(tp, offset)
            if offset > 0:
                self.consumer._read_offset[tp] = offset
            elif tp in self.consumer._read_offset:
                del self.consumer._read_offset[tp]
        self.changelog_epoch += 1
        await asyncio.wait_for(
            asyncio.gather(*[consumer.position(tp) for tp in partitions]),
            timeout=self.app.conf.broker_request_timeout,
        )

    async def fetch_batch(
        self, active, timeout: float, rekey: str, max_records: int | None = None
    ) -> tuple[dict, int, int, dict]:
        """Faust's fetch (`_fetch_records`), the seek epochs its records follow (source
        partitions, changelog partitions), and the consumer's positions of the re-key
        partitions after it (past transaction markers, which no record shows)."""
        consumer = self._ensure_consumer()
        fetcher = consumer._fetcher  # aiokafka reads the size as it builds each request
        if self._fetch_bytes is None:
            self._fetch_bytes = fetcher._max_partition_fetch_bytes
        fetcher._max_partition_fetch_bytes = (
            RESTORE_FETCH_BYTES if max_records else self._fetch_bytes
        )
        records = await self._fetch_records(
            consumer, active, timeout=timeout, max_records=max_records or consumer._max_poll_records
        )
        # aiokafka keeps the consumed position per partition here; `position()` would
        # wait for an unset one
        assignment = consumer._subscription.subscription.assignment
        consumed = {}
        for tp in active:
            if tp.topic == rekey:
                state = assignment.state_value(tp) if assignment else None
                if state is not None and state.has_valid_position:
                    consumed[TopicPartition(tp.topic, tp.partition)] = state.position
        return records, self.seek_epoch, self.changelog_epoch, consumed

    async def end_offsets(self, tps) -> dict:
        return await self._ensure_consumer().end_offsets(
            [TopicPartition(tp.topic, tp.partition) for tp in tps]
        )

    async def stable_offsets(self, tps) -> dict:
        """The group's committed offsets of any partitions, once stable."""
        return await fetch_stable_offsets(
            self._ensure_consumer(), [TopicPartition(tp.topic, tp.partition) for tp in tps]
        )

    async def partition_count(self, topic: str) -> int:
        """The topic's partition count after a metadata refresh. The refresh updates the
        consumer's cluster metadata: on the group's leader, a grown topic starts the
        rebalance that assigns its new partitions at once."""
        client = self._ensure_consumer()._client
        await client.force_metadata_update()
        return len(client.cluster.partitions_for_topic(topic) or ())


async def static_heartbeat(coordinator) -> bool:
    """aiokafka's `GroupCoordinator._do_heartbeat` (consumer/group_coordinator.py) for a
    static member: Heartbeat v3, with the instance id (app.kafka.kip345), and a member whose
    instance id another worker has taken since exits at once, without committing.

    The other answers are handled as aiokafka handles them.
    """
    c = coordinator
    request = kip345.StaticHeartbeatRequest(
        c.group_id, c.generation, c.member_id, c._group_instance_id
    )
    try:
        resp = await c._send_req(request)
    except Errors.KafkaError as err:
        log.error("Heartbeat send request failed: %s. Will retry.", err)
        return False
    error_type = Errors.for_code(resp.error_code)
    if error_type is Errors.NoError:
        return True
    if resp.error_code == kip345.FENCED_INSTANCE_ID:
        # The worker's restart (or a second worker configured with the same instance
        # id) has joined since: it owns the partitions now. Anything handled here
        # must not be produced, and rejoining would take the membership back.
        fatal(
            "fenced: another worker joined the group with this instance id",
            ZombieFenced(
                f"instance id {c._group_instance_id!r}, member {c.member_id} of generation "
                f"{c.generation}: FENCED_INSTANCE_ID (two live workers must never share "
                "an instance id)"
            ),
        )
    if error_type in (Errors.GroupCoordinatorNotAvailableError, Errors.NotCoordinatorForGroupError):
        log.warning("Heartbeat failed for group %s: coordinator not valid", c.group_id)
        c.coordinator_dead()
    elif error_type is Errors.RebalanceInProgressError:
        log.warning("Heartbeat failed for group %s because it is rebalancing", c.group_id)
        c.request_rejoin()
        return True  # stay a member while the rebalance lasts
    elif error_type in (Errors.IllegalGenerationError, Errors.UnknownMemberIdError):
        log.warning("Heartbeat failed for group %s: %s; rejoining", c.group_id, error_type())
        c.reset_generation()
    elif error_type is Errors.GroupAuthorizationFailedError:
        raise error_type(c.group_id)
    else:
        raise Errors.KafkaError(f"Unexpected exception in heartbeat task: {error_type()!r}")
    return False


class MergerConsumer(Consumer):
    def __init__(self, *args, engine: Engine, connection: Connection, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._engine = engine
        self._connection = connection  # for the short reads of app.kafka.probes
        self.counts = engine.counts  # restored_records, standby_records (/stats)
        self._restored_before = 0
        # per changelog partition restored into a RocksDB that had no held index: the
        # held-index keys written since (app.state.statestore.replay), until the engine
        # writes the partition or a rebalance comes
        self._held_written: dict = {}
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

    async def partition_count(self, topic: str) -> int:
        return await self._thread.call_thread(self._thread.partition_count, topic)

    def seconds_since_heartbeat(self) -> float:
        return time.monotonic() - self._thread.last_heartbeat_ok

    # -- the batch path

    async def _drain_messages(self, fetcher) -> None:
        """Fetch, and hand each fetch to the engine whole (Faust's loop: per record)."""
        sources = self._engine.source_topics
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
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
                    # read again unless a recovery seeks back before it (a standby then
                    # went on past the gap: chaos found markers missing after a
                    # rebalance). Source records are judged by their seek epoch.
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

    def _restore_done(self, recovery) -> None:
        seconds = time.monotonic() - (recovery._recovery_started_at or time.monotonic())
        restored = self.counts["restored_records"] - self._restored_before
        self._restored_before = self.counts["restored_records"]
        log.info(
            "restored %d changelog records of %d partitions in %.2f s (%.0f records/s)",
            restored,
            len(recovery.active_tps),
            seconds,
            restored / max(seconds, 1e-9),
        )
        recovery.signal_recovery_end.set()  # what Faust's reader sets at the end

    def _apply_changelog(self, tp, records: list) -> None:
        """A fetch's changelog records of one partition, written to RocksDB at once.

        Faust's way is one record at a time: a message, a flow-control wait, a hop
        through its changelog queue, its recovery loop's bookkeeping, and a write
        batch per 1,000 records (about 3,500 records/s restored, bench.restore).
        Here the whole fetch of a partition goes into one write batch with its
        offset (app.state.statestore.replay), and the recovery's offsets and end signal
        are updated as Faust's changelog reader does (faust/tables/recovery.py,
        `_slurp_changelogs`). No await between the checks and the write: a
        rebalance or a recovery's seek cannot come in between. Records of a
        suspended flow or of an earlier seek are left: the next recovery reads
        them again from the offset RocksDB holds.
        """
        if not (self.flow_active and self.app.flow_control.is_active()):
            return
        recovery = self.app.tables.recovery
        if tp in recovery.active_tps:
            offsets, standby = recovery.active_offsets, False
        elif tp in recovery.standby_tps:
            offsets, standby = recovery.standby_offsets, True
        else:
            return  # neither restored nor a standby here (Faust only warns)
        seen = offsets.get(tp)
        if seen is not None and records[0].offset <= seen:  # read again after a seek
            records = [r for r in records if r.offset > seen]
        if not records:
            return
        store = recovery.tp_to_table[tp].data
        db = store._db_for_partition(tp.partition)
        if tp not in self._held_written:  # its first records since the assignment
            fresh = store.persisted_offset(tp) is None and not has_held_index(db)
            self._held_written[tp] = set() if fresh else None
        offsets[tp] = replay(db, records, store.offset_key, self._held_written[tp])
        if standby:
            self.counts["standby_records"] += len(records)
        elif recovery.in_recovery:
            self.counts["restored_records"] += len(records)
            if not recovery.need_recovery():
                self._restore_done(recovery)
                for active in recovery.active_tps:  # the engine writes them from now on
                    self._held_written.pop(active, None)
        tables = self.app.tables
        if standby and not tables.standbys_ready and not recovery.standby_remaining_total():
            tables.on_standbys_ready()

    async def perform_seek(self) -> None:
        sources = [tp for tp in self.assignment() if tp.topic in self._engine.source_topics]
        if not sources:
            return
        positions, group, epoch = await self._thread.call_thread(
            self._thread.seek_to_stable_offsets, sources
        )
        await self._engine.on_assigned(positions, group, epoch)

    async def on_partitions_revoked(self, revoked) -> None:
        self._held_written.clear()
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
        # Faust warns when its stream has not taken a partition's records for a
        # while; records no longer pass through a Faust stream.
        return None

    async def highwaters(self, *partitions):
        ends = await super().highwaters(*partitions)
        if not self.in_transaction:
            return ends
        # the partitions this worker now owns: read them only once no previous
        # owner's transaction is open there (app.kafka.probes); standbys are read as they
        # are, and checked against the log's end (app.kafka.probes.standby_ends)
        actives = set(self.app.assignor.assigned_actives())
        owned = [tp for tp in partitions if tp in actives]
        if owned:
            ends = {**ends, **await ends_without_open_transactions(self._connection, owned)}
        ends = await after_last_records(self._connection, ends)
        standbys = {tp: end for tp, end in ends.items() if tp not in actives}
        if standbys:
            ends = {**ends, **await standby_ends(self._connection, standbys)}
        return ends


def derive_on_recovery(store) -> None:
    """Faust's `Store.apply_changelog_batch` (faust/stores/rocksdb.py, rocksdict driver)
    as `MergerConsumer._apply_changelog` writes: with the local indexes derived from
    the states and the offset in the same write batch (app.state.statestore.replay). Faust
    calls it for what its changelog queue buffered (nothing: changelog records take
    the batch path). Replaced on the one store instance.
    """

    def apply_changelog_batch(batch, to_key, to_value) -> None:
        by_tp: dict = {}
        for event in batch:
            by_tp.setdefault(event.message.tp, []).append(event.message)
        for tp, messages in by_tp.items():
            messages.sort(key=lambda m: m.offset)
            replay(store._db_for_partition(tp.partition), messages, store.offset_key)

    assert store.use_rocksdict, "the held index is written for the rocksdict driver"
    store.apply_changelog_batch = apply_changelog_batch


def keep_changelog_queue_on_resume(app) -> None:
    """Faust clears its changelog queue at every `flow_control.resume()` (the queue is
    made with clear_on_resume, faust/tables/manager.py), also in
    `Recovery.on_recovery_completed`, after the standby partitions were sought and
    resumed (faust/tables/recovery.py). The records queued by then are past the
    consumer's position and nothing seeks back: the standby went on past the gap and
    persisted an offset beyond it (chaos, seed 31: a marker missing from a standby's
    RocksDB that claimed the changelog's end).

    A rebalance (revoke, stop) suspends the flow and then clears, and the recovery
    that follows seeks every changelog partition back to what was applied: that
    clear stays. `resume()` marks the flow active before it clears: that one goes.
    The records kept then are standby records: an active partition is read to the
    end offsets of its recovery and paused before, and nothing lies past them (the
    previous owner committed before revoking; a zombie stops producing).

    The worker's changelog records no longer pass through this queue
    (`MergerConsumer._apply_changelog`); the guard stays for anything Faust itself
    still enqueues.
    """
    queue = app.tables.changelog_queue  # Faust's own instance (a cached property)
    flow = app.flow_control
    clear = queue.clear

    def clear_unless_resuming() -> None:
        if not flow.is_active():
            clear()
        elif queue.qsize():
            log.info("flow resumed: %d changelog records kept in the queue", queue.qsize())

    queue.clear = clear_unless_resuming  # FlowControlEvent.clear calls queue.clear()


def colocate_raw(assignments: dict, raw: str, rekey: str, raw_count: int, state_count: int):
    """Give raw partition p to the members owning state partition p % state_count (the
    re-key partition, assigned with its changelog partition), as actives and standbys
    alike. With equal counts this is Faust's own co-partitioned assignment."""
    for assignment in assignments.values():
        for mine in (assignment.actives, assignment.standbys):
            state = set(mine.get(rekey, ()))
            if raw in mine or state:
                mine[raw] = [p for p in range(raw_count) if p % state_count in state]
    return assignments


class MergerAssignor(PartitionAssignor):
    """Faust's assignor, with two changes.

    - The raw topic's partitions follow their state partitions: raw partition p goes
      to the owner of state partition p % (state partitions).
    - An assignment made for an older address of this worker is taken. A static
      member restarted within the session timeout receives the assignment the
      group leader made for its previous incarnation, with the address (web URL)
      that one had; Faust asserts it is this worker's, and a worker restarted under
      another address failed that check at every restart. It is taken as it is; the
      group is asked to rebalance, once, so that the other workers route this
      worker's table partitions to its new address (a stable
      CAMELEER_WEB_ADVERTISED_HOST and port make this never happen).
    """

    _url_override: str | None = None

    @property
    def _url(self):
        return self._url_override or self.app.conf.canonical_url

    def on_assignment(self, assignment) -> None:
        assigned_to = ClientMetadata.loads(self._decompress(assignment.user_data)).url
        ours = str(self.app.conf.canonical_url)
        if assigned_to == ours:
            super().on_assignment(assignment)
            return
        log.warning(
            "the group assigned these partitions to this worker's previous address %s, "
            "not %s: taken, and the group asked to rebalance for the new address",
            assigned_to,
            ours,
        )
        self._url_override = assigned_to
        try:
            super().on_assignment(assignment)
        finally:
            self._url_override = None
        # on the consumer's thread, in the coordinator's join: a rejoin follows it
        self.app.consumer._thread._consumer._coordinator.request_rejoin()

    def _global_table_standby_assignments(self, assignments, partitions_by_topic):
        # Faust's last step over the co-partitioned assignments (faust/assignor/
        # partition_assignor.py, `_perform_assignment`), before they are encoded
        assignments = super()._global_table_standby_assignments(assignments, partitions_by_topic)
        engine = self.app._engine
        raw, rekey = engine.raw_topic, engine.rekey_topic
        if raw in partitions_by_topic:
            count, state = partitions_by_topic[raw], engine.state_partitions
            if count % state:
                log.warning(
                    "raw topic %s has %d partitions, not a multiple of the state's %d: keyed "
                    "records on a raw partition whose state partition is another travel "
                    "through the re-key topic (docs/growing-topics.md)",
                    raw,
                    count,
                    state,
                )
            assignments = colocate_raw(assignments, raw, rekey, count, state)
        return assignments


class MergerTransactionManager(TransactionManager):
    """Inert: the engine's one producer per worker makes the transactions."""

    async def on_rebalance(self, assigned, revoked, newly_assigned) -> None:
        return None  # Faust would start one transactional producer per partition

    async def on_partitions_revoked(self, revoked) -> None:
        return None  # the engine commits, via MergerConsumer.on_partitions_revoked

    async def commit(self, offsets, start_new_transaction: bool = True) -> bool:
        return False  # Faust's commit timer: commits are the engine's

    async def send(self, *args, **kwargs):
        raise RuntimeError("records go through app.engine.engine, not Faust's transactions")


class MergerTransport(Transport):
    def __init__(self, url, app, *, engine: Engine, connection: Connection, **kwargs) -> None:
        super().__init__(url, app, **kwargs)
        self._engine = engine
        self._connection = connection

    def create_consumer(self, callback, **kwargs):
        return MergerConsumer(
            self,
            callback=callback,
            loop=self.loop,
            engine=self._engine,
            connection=self._connection,
            **kwargs,
        )

    def create_transaction_manager(self, consumer, producer, **kwargs):
        return MergerTransactionManager(self, consumer=consumer, producer=producer, **kwargs)


class MergerApp(faust.App):
    """faust.App with the batch engine's transport."""

    def __init__(self, *args, engine: Engine, registry, connection: Connection, **kwargs) -> None:
        self._engine = engine
        self._registry = registry
        self._connection = connection
        # raw partitions follow their state partitions; a static member's assignment
        # made for its previous address is taken (MergerAssignor)
        super().__init__(*args, PartitionAssignor=MergerAssignor, **kwargs)

    async def on_start(self) -> None:
        await super().on_start()
        keep_changelog_queue_on_resume(self)
        # Not an app.task: Faust starts those once table recovery is complete, and
        # recovery completes when the engine has the assignment, which waits for
        # the registry (a v2 agent's records must not be read as v1).
        self.add_future(self._registry.start())

    def _new_transport(self):
        return MergerTransport(
            self.conf.broker_consumer, self, engine=self._engine, connection=self._connection
        )

    async def on_stop(self) -> None:
        await super().on_stop()  # stops the consumer (the engine commits) first
        await self._registry.stop()
