"""The batch engine: whole fetched batches in, one transaction per worker per commit out.

How a record travels (docs/design.md):
1. The consumer's fetch returns a batch per partition (app.overrides.internals replaces
   Faust's per-record drain loop); `handle` checks that each batch follows the
   last one handled, then the processor runs it synchronously: state changes go
   to the StateStore's in-memory overlay, output/DLQ/re-key records are appended
   to the Outbox's open batches.
2. Every `commit_interval` (`commit`), one commit covers every partition this
   worker owns. exactly_once: the overlay's last value per key goes to the
   changelog, every batch is handed to the worker's ONE transactional producer
   and acknowledged, the source offsets join the transaction with the consumer
   group's generation and member id (TxnOffsetCommit v3, app.kafka.kip447), and the
   transaction commits. Only then is the overlay written to RocksDB.
   at_least_once: outputs, then the changelog, then the group's offsets, then
   RocksDB; a crash in between repeats records and never loses one.
3. A rebalance commits what was handled before the partitions go (`on_revoked`);
   the new assignment resumes at the group's stable committed offsets
   (`on_assigned`, after Faust has recovered the table).

A zombie (a worker that lost its partitions without noticing, e.g. paused past
its session timeout) cannot commit: the group coordinator refuses offsets with a
stale generation, the transaction fails, and the worker exits without
committing anything (`fatal`); its restart rejoins as a new member.

No Faust here: the engine sees the consumer through `GroupPort` and produces with
the aiokafka producer it is given.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from aiokafka import TopicPartition

from app.core.rekeybarrier import RekeyBarrier
from app.engine.outbox import Outbox
from app.engine.processor import Processor
from app.kafka.kip447 import GroupMetadata
from app.state.statestore import StateStore

log = logging.getLogger(__name__)

EXIT_FATAL = 70
# Full batches that may wait for a commit to end before records are no longer handled.
QUEUED_BYTES_MAX = 16 * 1024**2


def fatal(what: str, exc: BaseException) -> None:
    """Stop the process at once, as a kill would, without committing anything.

    A record whose handling failed half-way has left part of its effects in the
    open transaction; a graceful stop would commit them. Exiting aborts that
    transaction (the worker's next start, or the transaction timeout, ends it)
    and the next owner of the partitions handles the records again. The
    orchestrator restarts us.
    """
    log.critical("%s: %r; exiting without commit", what, exc, exc_info=exc)
    logging.shutdown()
    os._exit(EXIT_FATAL)


def _is_fencing(exc: BaseException) -> bool:
    """Refused offsets (KIP-447), or a newer producer with our transactional id."""
    return type(exc).__name__ in ("ZombieFenced", "ProducerFenced", "InvalidProducerEpoch")


class CommitWatch(Protocol):
    """Told of each commit's end (app.ops.metrics): once per commit, never per record."""

    def committed(self, seconds: float, offsets: dict, counts: dict, published_ms: list) -> None:
        """`counts`: the counters as the commit was cut; `published_ms`: Kafka timestamps of
        the terminal events whose records the commit published."""

    def commit_failed(self) -> None: ...


class GroupPort(Protocol):
    """What the engine needs of the group's consumer (app.overrides.internals.MergerConsumer)."""

    async def commit_offsets(self, offsets: dict) -> bool: ...

    async def end_offsets(self, tps: Iterable) -> dict: ...

    async def stable_offsets(self, tps: Iterable) -> dict: ...

    async def partition_count(self, topic: str) -> int:
        """The topic's partition count now (fresh metadata)."""

    def seconds_since_heartbeat(self) -> float: ...


class Engine:
    def __init__(
        self,
        processor: Processor,
        store: StateStore,
        counts: Counter[str],
        *,
        exactly_once: bool,
        raw_topic: str,
        rekey_topic: str,
        raw_partitions: int,
        state_partitions: int,
        new_producer: Callable[[], object],
        registry_ready: asyncio.Event,
        first_record_at: Callable,
        session_timeout_s: float = 10.0,
    ) -> None:
        self.processor = processor
        self.store = store
        self.counts = counts
        self.exactly_once = exactly_once
        self.raw_topic = raw_topic
        self.rekey_topic = rekey_topic
        self.source_topics = frozenset({raw_topic, rekey_topic})
        # The held state's partition count (re-key and changelog topics). Raw partition
        # p is handled in state partition p % state_partitions; the raw topic may grow.
        self.state_partitions = state_partitions
        self.raw_partitions = raw_partitions  # the raw topic's, as last seen
        self._barrier = RekeyBarrier()  # how far the re-key topic is known complete
        self._consumed: dict = {}  # re-key TopicPartition -> consumer position handled
        self._pending = False  # re-keyed terminals wait: follow the re-key progress
        self._waiting_mark = 0
        self._new_producer = new_producer
        self._registry_ready = registry_ready
        self._first_record_at = first_record_at  # async (tp, offset) -> first record there
        # at_least_once has no transaction to fence a zombie: a worker whose group heard
        # nothing from it for a session timeout (the consumer's, CAMELEER_SESSION_TIMEOUT)
        # may have lost its partitions, and must not produce what it handled before (a
        # stale RUNNING after the new owner's terminal)
        self.session_timeout_s = session_timeout_s
        self._port: GroupPort | None = None
        self._lock = asyncio.Lock()  # a batch, a sweep, a commit: one at a time
        self._producer = None
        self._outbox: Outbox | None = None
        self._changelog: Outbox | None = None
        self._idle = asyncio.Event()  # no commit under way: records may be sent
        self._idle.set()
        self._epoch = 0  # the seek the current assignment's positions come from
        self._epoch_changed = asyncio.Condition()
        self._stopped = False
        # the current assignment
        self._group: GroupMetadata | None = None
        self._positions: dict = {}  # source TopicPartition -> next offset to handle
        self._committed: dict = {}  # source TopicPartition -> offset committed
        self._fresh: set = set()  # partitions whose first batch since the seek is due
        self._with_markers: set = set()  # raw partitions seen to hold transaction markers
        self._catch_up_to: dict = {}  # at_least_once: end offsets at assignment
        self.last_commit_s = 0.0
        self.seconds: Counter[str] = Counter()  # wall time by activity, for /stats and tuning
        # told of every commit that went through (app.ops.metrics.Metrics), or None
        self.watch: CommitWatch | None = None

    def attach(self, port: GroupPort) -> None:
        self._port = port

    @property
    def assigned(self) -> frozenset:
        return frozenset(self._positions)

    @property
    def owned_state(self) -> frozenset:
        """The state partitions this worker owns: those of its re-key partitions."""
        return frozenset(tp.partition for tp in self._positions if tp.topic == self.rekey_topic)

    def state_partition(self, tp) -> int:
        """Where a source partition's records are handled (see app.engine.processor)."""
        return tp.partition % self.state_partitions if tp.topic == self.raw_topic else tp.partition

    def layout_problem(self, assigned: Iterable) -> str | None:
        """Why an assignment (every active topic partition) cannot be worked, or None.

        Raw partition p must come with state partition p % state_partitions (its
        re-key and changelog partitions), and the internal topics must not have
        grown: an execution's state would be sought where it was never written.
        """
        tps = {(tp.topic, tp.partition) for tp in assigned}
        internal = (self.rekey_topic, self.store.changelog_topic)
        for topic, partition in sorted(tps):
            if topic in internal and partition >= self.state_partitions:
                return (
                    f"{topic} has grown past the held state's {self.state_partitions} "
                    f"partitions (partition {partition} assigned); internal topics cannot "
                    "grow: stop the workers and see docs/growing-topics.md"
                )
        for topic, partition in sorted(tps):
            state = partition % self.state_partitions
            if topic == self.raw_topic or topic in internal:
                missing = [t for t in internal if (t, state) not in tps]
                if missing:
                    return (
                        f"{topic}[{partition}] was assigned without state partition {state} "
                        f"({', '.join(missing)}): the group's leader does not co-assign them "
                        "(an older worker version?); see docs/growing-topics.md"
                    )
        return None

    @property
    def stopping(self) -> bool:
        return self._stopped

    @property
    def port(self) -> GroupPort | None:
        return self._port

    @property
    def committed_offsets(self) -> dict:
        """Source TopicPartition -> offset committed (or being committed)."""
        return dict(self._committed)

    # ---- lifecycle --------------------------------------------------------------------

    async def _ensure_started(self) -> None:
        if self._producer is not None:
            return
        producer = self._new_producer()
        # With a transactional id, start() fences the previous incarnation of this
        # worker and aborts its open transaction.
        await producer.start()
        if self.exactly_once:
            await producer.begin_transaction()
        self._producer = producer
        self._outbox = Outbox(producer)  # outputs, dead letters, re-key records
        self._changelog = Outbox(producer)  # the held table's changelog

    async def start(self) -> None:
        """Start the producer now, before the first assignment is sought (idempotent)."""
        async with self._lock:
            if not self._stopped:
                await self._ensure_started()

    async def stop(self) -> None:
        """Commit what was handled and stop producing (a graceful stop)."""
        async with self._lock:
            if self._stopped:
                return
            self._stopped = True
            async with self._epoch_changed:
                self._epoch_changed.notify_all()  # batches waiting for an assignment: drop
            if self._producer is None:
                return
            if self._group is not None:
                await self._commit_locked(begin_next=False)
            await self._producer.stop()

    # ---- assignment -------------------------------------------------------------------

    async def on_assigned(self, positions: dict, group: GroupMetadata, epoch: int) -> None:
        """The source partitions of a new assignment, sought to the group's stable offsets.

        `epoch` numbers the seek: batches carry the epoch they were fetched in.
        """
        await self._registry_ready.wait()  # a v2 agent's records must not be read as v1
        ends = {}
        if not self.exactly_once and self._port is not None:
            ends = await self._port.end_offsets(list(positions))
        async with self._lock:
            if self._stopped:
                return
            await self._ensure_started()
            self._group = group
            self._positions = dict(positions)
            self._committed = dict(positions)
            self._fresh = set(positions)
            self._with_markers.clear()
            self._catch_up_to = {tp: end for tp, end in ends.items() if end is not None}
            self._barrier.reset()
            self._consumed.clear()
        async with self._epoch_changed:
            self._epoch = max(self._epoch, epoch)
            self._epoch_changed.notify_all()
        log.info(
            "generation %d: source partitions resume at %s",
            group.generation_id,
            {f"{tp.topic}[{tp.partition}]": offset for tp, offset in sorted(positions.items())},
        )

    async def on_revoked(self, revoked: Iterable) -> None:
        """Commit what was handled while this worker still owns the partitions, then let go.

        The eager protocol revokes every partition at each rebalance, also those
        that come straight back: work left uncommitted here would be done again by
        whoever owns them next.
        """
        async with self._lock:
            if self._stopped or self._group is None:
                return
            await self._commit_locked()
            for tp in revoked:
                self._positions.pop(tp, None)
                self._committed.pop(tp, None)
                self._fresh.discard(tp)
                self._catch_up_to.pop(tp, None)
            if not self._positions:
                self._group = None
            self.store.discard({tp.partition for tp in revoked if tp.topic == self.rekey_topic})

    # ---- records ----------------------------------------------------------------------

    async def handle(self, batch: dict, epoch: int, consumed: dict | None = None) -> None:
        """Records fetched together: TopicPartition -> records in offset order.

        `consumed`: the consumer's positions of the re-key partitions once the batch
        was taken (past transaction markers), for the re-key progress.

        `epoch`: the seek the records follow. Fetched before the last seek, they are
        dropped (the seek put the consumer back where they will be read again);
        fetched after a seek whose assignment the engine has not taken yet, they
        wait for it.
        """
        if epoch > self._epoch:
            async with self._epoch_changed:
                await self._epoch_changed.wait_for(lambda: self._epoch >= epoch or self._stopped)
        waited = time.monotonic()
        async with self._lock:
            started = time.monotonic()
            self.seconds["handle_lock_wait"] += started - waited
            if self._stopped or self._group is None or epoch != self._epoch:
                return  # fetched before a seek: read again from the sought positions
            if consumed:  # handled below, before anything else can read it
                self._consumed.update(consumed)
            outbox = self._outbox
            for tp, records in batch.items():
                expected = self._positions.get(tp)
                if expected is None or not records:
                    continue
                records = await self._follows(tp, records, expected)
                if not records:
                    continue
                try:
                    self.processor.handle(self.state_partition(tp), records, outbox)
                except Exception as exc:  # never skip a record: exit, the restart redoes it
                    fatal(f"handling {tp.topic}[{tp.partition}] from {records[0].offset}", exc)
                self._positions[tp] = records[-1].offset + 1
            t_sf = time.monotonic()
            self.seconds["handle_process"] += t_sf - started
            await self._send_full()
            self.seconds["handle_send"] += time.monotonic() - t_sf
            self.seconds["handle"] += time.monotonic() - started

    async def _follows(self, tp, records: list, expected: int) -> list:
        """The part of a batch that follows the last record handled (safety nets).

        aiokafka hands records on from where the engine sought, in order; these
        checks catch a delivery that does not (Faust's old per-record path did
        both after rebalances). Each firing is logged with "safety net".
        """
        fresh = tp in self._fresh
        self._fresh.discard(tp)
        if records[0].offset < expected:
            late = [r for r in records if r.offset >= expected]
            self.counts["safety_net_redelivered"] += len(records) - len(late)
            log.warning(
                "safety net: %s[%d] delivered %d..%d again (next due %d); dropped",
                tp.topic,
                tp.partition,
                records[0].offset,
                min(expected, records[-1].offset + 1) - 1,
                expected,
                extra={"topic": tp.topic, "partition": tp.partition},
            )
            records = late
            if not records:
                return records
        first = records[0].offset
        if first == expected:
            return records
        # Past the expected offset: transaction markers (or aborted records) lie in
        # between on a transactional topic, or records were skipped. After a seek,
        # and on the raw topic until markers are seen there, ask the broker.
        if fresh or (tp.topic == self.raw_topic and tp not in self._with_markers):
            found = await self._first_record_at(tp, expected)
            if found != first:
                self.counts["safety_net_skip"] += 1
                fatal(
                    f"safety net: records skipped on {tp.topic}[{tp.partition}]",
                    RuntimeError(f"offset {first} read where {expected} was due (first: {found})"),
                )
            if not fresh:
                self._with_markers.add(tp)
        return records

    # ---- sweeps -----------------------------------------------------------------------

    def _caught_up(self, partition: int) -> bool:
        # at_least_once: a partition that changed hands may hold state older than
        # records already emitted; sweeping it before re-reading them could emit a
        # RUNNING after its terminal. Exactly-once state is exact.
        if self.exactly_once:
            return True
        return all(
            self._positions.get(tp, -1) >= end
            for tp, end in self._catch_up_to.items()
            if self.state_partition(tp) == partition
        )

    async def sweep(self) -> int:
        """Stale flushes, retention, pending re-keyed terminals: every owned partition."""
        safe_ms = self._barrier.safe_ms
        if self._pending and self._group is not None and self._port is not None:
            safe_ms = await self._rekey_progress()
        async with self._lock:
            if self._stopped or self._group is None:
                return 0
            swept = 0
            still_waiting = self.counts["terminal_still_waiting"]
            for partition in sorted(self.owned_state):
                if self._caught_up(partition):
                    try:
                        swept += self.processor.sweep(partition, self._outbox, safe_ms)
                    except Exception as exc:
                        fatal(f"sweeping partition {partition}", exc)
            await self._send_full()
            # pending terminals: seen waiting now, or new since the last round
            waiting = self.counts["terminal_waiting"]
            self._pending = (
                self.counts["terminal_still_waiting"] > still_waiting
                or waiting != self._waiting_mark
            )
            self._waiting_mark = waiting
            self.counts["sweep_rounds"] += 1
            return swept

    async def _rekey_progress(self) -> int:
        """One round of app.core.rekeybarrier: raw ends, then committed, then re-key ends.

        The raw topic's partition count is read afresh each round: a RUNNING may wait
        on a partition added since, which no worker owns yet (its committed offset,
        none, holds the barrier back until an owner has handled it).
        """
        ours = [tp for tp in self._positions if tp.topic == self.rekey_topic]
        try:
            taken_ms = int(time.time() * 1000)
            count = await self._port.partition_count(self.raw_topic)
            if count > self.raw_partitions:
                log.info("raw topic %s has grown to %d partitions", self.raw_topic, count)
            self.raw_partitions = max(self.raw_partitions, count)
            raw = [TopicPartition(self.raw_topic, p) for p in range(self.raw_partitions)]
            raw_ends = await self._port.end_offsets(raw)
            committed = await self._port.stable_offsets(raw)
            rekey_ends = await self._port.end_offsets(ours)
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

    def _check_member(self) -> None:
        """at_least_once, before anything is produced: still a member of the group?"""
        if self.exactly_once or self._port is None:
            return  # the transaction is fenced instead
        silent = self._port.seconds_since_heartbeat()
        if silent > self.session_timeout_s:
            fatal(
                "fenced: this worker may no longer own its partitions",
                RuntimeError(
                    f"no heartbeat accepted for {silent:.1f} s (session timeout "
                    f"{self.session_timeout_s:g} s): nothing handled since is produced"
                ),
            )

    async def _send_full(self) -> None:
        """Send the batches that filled up (under the lock).

        While a commit is under way they wait for the next transaction, and
        records go on being handled into new batches, up to a memory bound.
        """
        if self._outbox.has_full:
            self._check_member()
            if not self._idle.is_set():
                if self._outbox.full_bytes < QUEUED_BYTES_MAX:
                    return
                waited = time.monotonic()
                await self._idle.wait()
                self.seconds["handle_wait_commit"] += time.monotonic() - waited
            try:
                await self._outbox.send_full()
            except Exception as exc:
                fatal("sending records", exc)

    # ---- commits ----------------------------------------------------------------------
    #
    # A commit is cut in two. `_begin_commit` (under the lock, short): the offsets
    # handled so far and the open state layer are sealed, and every record they
    # caused is handed to the producer. `_end_commit` (without the lock): the
    # broker's round trips, while the next records are handled into the next
    # layer and the outboxes' open batches; those wait for `_idle` (the next
    # transaction begun) before anything of theirs is sent.

    async def commit(self) -> None:
        async with self._lock:
            if self._stopped or self._group is None:
                return
            job = await self._begin_commit(begin_next=True)
        if job is not None:
            await self._end_commit(job)

    async def _commit_locked(self, begin_next: bool = True) -> None:
        job = await self._begin_commit(begin_next)
        if job is not None:
            await self._end_commit(job)

    async def _begin_commit(self, begin_next: bool) -> _Commit | None:
        await self._idle.wait()  # the previous commit has ended
        offsets = {
            tp: offset
            for tp, offset in self._positions.items()
            if offset != self._committed.get(tp)
        }
        if not offsets and not self.store.dirty_partitions() and not self._outbox.pending:
            return None
        if self.exactly_once:
            # Every transaction carries the offsets of every owned partition, changed or
            # not: the group's generation goes with them, so the coordinator refuses a
            # zombie's transaction even when only its sweep wrote (a chaos run's
            # SIGCONTed worker flushed stale RUNNINGs that way before this)
            offsets = dict(self._positions)
        self._idle.clear()
        self._check_member()
        published, self.processor.published_ms = self.processor.published_ms, []
        job = _Commit(
            offsets, self.store.seal(), begin_next, time.monotonic(), dict(self.counts), published
        )
        try:
            for partition in job.sealed:
                self.store.send_changelog(partition, self._add_changelog)
            await self._outbox.flush()
            if self.exactly_once:
                await self._changelog.flush()
        except Exception as exc:
            fatal("commit failed: records not handed to the producer", exc)
        self._committed.update(offsets)
        return job

    async def _end_commit(self, job: _Commit) -> None:
        try:
            if self.exactly_once:
                last = await self._end_transaction(job)
            else:
                last = await self._end_plain(job)
        except Exception as exc:
            if self.watch is not None:
                self.watch.commit_failed()
            if _is_fencing(exc):
                fatal("fenced: this worker no longer owns its partitions", exc)
            fatal("commit failed: a record or the transaction was not written", exc)
        topic = self.store.changelog_topic
        self.store.committed({p: last[(topic, p)] for p in job.sealed if (topic, p) in last})
        self.last_commit_s = time.monotonic() - job.started
        self.seconds["commit"] += self.last_commit_s
        self.counts["commits"] += 1
        if self.watch is not None:
            self.watch.committed(self.last_commit_s, job.offsets, job.counts, job.published_ms)
        self._idle.set()

    def _add_changelog(self, topic: str, partition: int, key: bytes, value: bytes | None) -> None:
        self._changelog.add(topic, partition, key, value)

    async def _end_transaction(self, job: _Commit) -> dict:
        # every record of the transaction is written before its offsets commit: a
        # failed send (broker restart, expired batch) fails the whole transaction
        t0 = time.monotonic()
        await self._outbox.delivered()
        last = await self._changelog.delivered()
        t1 = time.monotonic()
        if job.offsets:
            await self._producer.send_offsets_to_transaction(job.offsets, self._group)
        t2 = time.monotonic()
        await self._producer.commit_transaction()
        t3 = time.monotonic()
        if job.begin_next:
            await self._producer.begin_transaction()
        seconds = self.seconds
        seconds["commit_delivered"] += t1 - t0
        seconds["commit_offsets"] += t2 - t1
        seconds["commit_end"] += t3 - t2
        return last

    async def _end_plain(self, job: _Commit) -> dict:
        """at_least_once: outputs, then the changelog, then the offsets (then RocksDB).

        The state never gets ahead of the outputs it stands for: a marker saved
        before its terminal record was written would drop that record on replay.
        """
        await self._outbox.delivered()
        self._check_member()
        await self._changelog.flush()
        last = await self._changelog.delivered()
        if job.offsets and not await self._port.commit_offsets(job.offsets):
            # a rebalance under way: the records are read again; their outputs
            # went out already, so they repeat exactly. The partitions may have had
            # another owner meanwhile (this worker paused past its session), whose
            # changelog records lie before this commit's: RocksDB keeps the offset
            # it had, so that the next restore here reads those too (past them, a
            # marker of that owner's would be missing here, and a stale flush could
            # put a RUNNING after its terminal).
            log.warning("offset commit refused: %s will be read again", sorted(job.offsets))
            return {}
        return last


@dataclass(frozen=True, slots=True)
class _Commit:
    offsets: dict  # source TopicPartition -> next offset, committed with the outputs
    sealed: list[int]  # partitions whose state writes this commit carries
    begin_next: bool
    started: float
    counts: dict  # the engine's counters as the commit was cut (for app.ops.metrics)
    published_ms: list[int]  # Kafka timestamps of the terminal events it publishes
