"""The batch engine: whole fetched batches in, one commit per worker per interval out.

It coordinates; each job is its own unit (docs/design.md):
- `Positions` (app.engine.positions): the assignment, where each source
  partition goes on, and the safety nets that check each batch follows the last;
- `Processor` (app.engine.processor): a batch handled synchronously, state
  changes to the StateStore's open layer, records to the outputs' open batches;
- `Sweeper` (app.engine.sweeper): stale flushes, retention, pending re-keyed
  terminals, and how far the re-key topic is known complete;
- `Checkpoint` (app.engine.checkpoint): one commit at a time, cut while no record
  is handled, finished while the next ones are;
- `Membership` (app.engine.membership): at_least_once's check that this worker
  is still a member before it produces.

One lock, the turn, lets one thing at a time change what they hold: a batch, a
sweep, an assignment, a revocation, the stop, the cut of a commit. `_commit`
decides what every commit covers, whoever asks: the commit timer (`commit`),
a revocation (`on_revoked`: finished before the partitions go), the stop.

A zombie (a worker that lost its partitions without noticing, e.g. paused past
its session timeout) cannot commit: the group coordinator refuses offsets with a
stale generation, the transaction fails, and the worker exits without
committing anything (`fatal`); its restart rejoins as a new member.

No Faust here: the engine sees the consumer through `GroupPort` and produces with
the aiokafka producer it is given.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable

from app.engine.checkpoint import Checkpoint, Cut, Reason
from app.engine.membership import Membership
from app.engine.outbox import Outbox
from app.engine.ports import EXIT_FATAL, CommitWatch, Fatal, GroupPort, fatal
from app.engine.positions import Positions
from app.engine.processor import Processor
from app.engine.sweeper import Sweeper
from app.kafka.kip447 import GroupMetadata
from app.state.statestore import StateStore

__all__ = ["EXIT_FATAL", "CommitWatch", "Engine", "GroupPort", "Reason", "fatal"]


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
        fatal: Fatal = fatal,
    ) -> None:
        self.processor = processor
        self.store = store
        self.counts = counts
        self.exactly_once = exactly_once
        self.raw_topic = raw_topic
        self.rekey_topic = rekey_topic
        self.source_topics = frozenset({raw_topic, rekey_topic})
        self.state_partitions = state_partitions  # the held state's (re-key, changelog)
        self.seconds: Counter[str] = Counter()  # wall time by activity, for /stats and tuning
        self.positions = Positions(
            counts, raw_topic, rekey_topic, state_partitions, first_record_at, fatal
        )
        self.sweeper = Sweeper(
            processor, self.positions, counts, exactly_once, raw_partitions, fatal
        )
        self.membership = Membership(exactly_once, session_timeout_s, fatal)
        self.checkpoint: Checkpoint | None = None  # once the producer has started
        # told of every commit that went through (app.ops.metrics.Metrics): set before start
        self.watch: CommitWatch | None = None
        self._new_producer = new_producer
        self._registry_ready = registry_ready
        self._fatal = fatal
        self.port: GroupPort | None = None  # the group's consumer, once attached
        self.stopping = False
        self._turn = asyncio.Lock()

    def attach(self, port: GroupPort) -> None:
        self.port = self.sweeper.port = self.membership.port = port
        if self.checkpoint is not None:
            self.checkpoint.consumer = port

    @property
    def assigned(self) -> frozenset:
        return self.positions.assigned

    @property
    def owned_state(self) -> frozenset:
        return self.positions.owned_state

    @property
    def committed_offsets(self) -> dict:
        """Source TopicPartition -> offset committed (or being committed)."""
        return self.positions.committed

    def state_partition(self, tp) -> int:
        return self.positions.state_partition(tp)

    def layout_problem(self, assigned: Iterable) -> str | None:
        """Why an assignment cannot be worked, or None (app.engine.positions)."""
        return self.positions.layout_problem(assigned, self.store.changelog_topic)

    # ---- lifecycle --------------------------------------------------------------------

    async def _ensure_started(self) -> None:
        if self.checkpoint is not None:
            return
        producer = self._new_producer()
        checkpoint = Checkpoint(
            producer,
            Outbox(producer),
            Outbox(producer),
            self.store,
            exactly_once=self.exactly_once,
            consumer=self.port,
            check_member=self.membership.check,
            take_published=self.processor.take_published,
            counts=self.counts,
            seconds=self.seconds,
            fatal=self._fatal,
            watch=self.watch,
        )
        await checkpoint.start()
        self.checkpoint = checkpoint

    async def start(self) -> None:
        """Start the producer now, before the first assignment is sought (idempotent)."""
        async with self._turn:
            if not self.stopping:
                await self._ensure_started()

    async def stop(self) -> None:
        """Commit what was handled and stop producing (a graceful stop)."""
        async with self._turn:
            if self.stopping:
                return
            self.stopping = True
            await self.positions.close()  # batches waiting for an assignment: dropped
            if self.checkpoint is None:
                return
            await self._commit(Reason.STOP)
            await self.checkpoint.stop()

    # ---- assignment -------------------------------------------------------------------

    async def on_assigned(self, positions: dict, group: GroupMetadata, epoch: int) -> None:
        """The source partitions of a new assignment, sought to the group's stable offsets.

        `epoch` numbers the seek: batches carry the epoch they were fetched in.
        """
        await self._registry_ready.wait()  # a v2 agent's records must not be read as v1
        ends = {}
        if not self.exactly_once and self.port is not None:
            ends = await self.port.end_offsets(list(positions))
        async with self._turn:
            if self.stopping:
                return
            await self._ensure_started()
            self.positions.assign(positions, group)
            self.sweeper.assign(ends)
        await self.positions.sought(epoch)

    async def on_revoked(self, revoked: Iterable) -> None:
        """Commit what was handled while this worker still owns the partitions, then let go.

        The eager protocol revokes every partition at each rebalance, also those
        that come straight back: work left uncommitted here would be done again by
        whoever owns them next.
        """
        async with self._turn:
            if self.stopping or self.positions.group is None:
                return
            await self._commit(Reason.REVOKED)
            self.positions.revoke(revoked)
            self.sweeper.revoke(revoked)
            self.store.discard({tp.partition for tp in revoked if tp.topic == self.rekey_topic})

    # ---- records and sweeps -----------------------------------------------------------

    async def handle(self, batch: dict, epoch: int, consumed: dict | None = None) -> None:
        """Records fetched together (TopicPartition -> records in offset order) after the
        seek numbered `epoch`: dropped when a later seek came since (it reads them again),
        held until the engine has the assignment of a seek it has not seen yet.
        `consumed`: the consumer's positions of the re-key partitions once the batch was
        taken (past transaction markers), for the re-key progress."""
        positions, seconds = self.positions, self.seconds
        await positions.wait_for_seek(epoch)
        waited = time.monotonic()
        async with self._turn:
            started = time.monotonic()
            seconds["handle_lock_wait"] += started - waited
            if self.stopping or positions.group is None or epoch != positions.epoch:
                return  # fetched before a seek: read again from the sought positions
            if consumed:  # handled below, before anything else can read it
                self.sweeper.consumed(consumed)
            outputs = self.checkpoint.outputs
            for tp, records in batch.items():
                records = await positions.follows(tp, records)
                if not records:
                    continue
                try:
                    self.processor.handle(positions.state_partition(tp), records, outputs)
                except Exception as exc:  # never skip a record: exit, the restart redoes it
                    where = f"{tp.topic}[{tp.partition}] from {records[0].offset}"
                    self._fatal(f"handling {where}", exc)
                positions.advance(tp, records[-1].offset + 1)
            sent = time.monotonic()
            seconds["handle_process"] += sent - started
            await self.checkpoint.send_full()
            seconds["handle_send"] += time.monotonic() - sent
            seconds["handle"] += time.monotonic() - started

    async def sweep(self) -> int:
        """Stale flushes, retention, pending re-keyed terminals: every owned partition."""
        safe_ms = await self.sweeper.safe_ms()
        async with self._turn:
            if self.stopping or self.positions.group is None:
                return 0
            swept = self.sweeper.sweep(self.checkpoint.outputs, safe_ms)
            await self.checkpoint.send_full()
            return swept

    # ---- commits ----------------------------------------------------------------------

    async def commit(self, reason: Reason = Reason.INTERVAL) -> None:
        """Commit what was handled: cut with the turn held, finished after it is let go
        while the next records are handled (the commit timer's)."""
        async with self._turn:
            cut = await self._commit(reason)
        if cut is not None:
            await self.checkpoint.finish(cut)

    async def _commit(self, reason: Reason) -> Cut | None:
        """Every commit, with the turn held. The commit timer's is returned cut, for its
        caller to finish; the others are finished here, before the turn is let go."""
        group = self.positions.group
        if group is None or (self.stopping and reason is not Reason.STOP):
            return None
        moved = self.positions.moved()
        # exactly_once: every transaction carries the offsets of every owned partition,
        # changed or not. The group's generation goes with them, so the coordinator
        # refuses a zombie's transaction even when only its sweep wrote.
        offsets = self.positions.current if self.exactly_once else moved
        cut = await self.checkpoint.cut(
            offsets, group, handled=bool(moved), begin_next=reason is not Reason.STOP
        )
        if cut is None:
            return None
        self.positions.committing(cut.offsets)
        if reason is Reason.INTERVAL:
            return cut
        await self.checkpoint.finish(cut)
        return None
