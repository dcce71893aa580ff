"""One commit at a time: the records, state and offsets handled since the last one, made durable.

A commit has two phases, so that its broker round trips overlap the handling
of the next records:
- `cut`, while no record is handled (the engine holds its turn): the offsets
  handled so far, the state written since the last commit sealed, and every
  record they caused handed to the producer;
- `finish`, while the next records are handled: the broker's answers, and only
  then RocksDB. Meanwhile the commit is `in_flight`: records handled fill new
  batches that wait for the next commit (`send_full`), up to QUEUED_BYTES_MAX;
  beyond that, handling waits for the finish.

The steps, numbered as in `cut` and `finish`:

exactly_once (one transaction per commit, of the worker's one producer)
  1. seal the state written since the last commit (app.state.statestore)
  2. its changelog records (last value per key) into the transaction
  3. every output batch and the changelog handed to the producer
  4. every record delivered
  5. the offsets into the transaction, with the group's generation (KIP-447)
  6. commit_transaction
  7. begin the next transaction (unless the worker stops)
  8. RocksDB written, with the changelog offsets it reaches
  9. the watch told (app.ops.metrics)

at_least_once (the state never gets ahead of the records it stands for)
  1. seal the state written since the last commit
  2. its changelog records appended, sent after the outputs
  3. every output batch handed to the producer
  4. every output delivered
  5. still a member of the group? (app.engine.membership)
  6. the changelog handed to the producer and delivered
  7. the offsets committed (refused: RocksDB keeps its changelog offset)
  8. RocksDB written, with the changelog offsets it reaches
  9. the watch told

A failed step exits the process without committing anything (`fatal`).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from app.engine.outbox import Outbox
from app.engine.ports import CommitWatch, Fatal, GroupPort, is_fencing
from app.state.statestore import StateStore

log = logging.getLogger(__name__)

# Full output batches that may wait for a commit to finish before handling waits too.
QUEUED_BYTES_MAX = 16 * 1024**2


class Reason(enum.Enum):
    """Why a commit is made now."""

    INTERVAL = "interval"  # the commit timer: finished while the next records are handled
    REVOKED = "revoked"  # partitions go: finished before they do
    STOP = "stop"  # the worker stops: finished, and no transaction begins after it


@dataclass(frozen=True, slots=True)
class Cut:
    """A commit between its two phases: what it covers."""

    offsets: dict  # source TopicPartition -> next offset, committed with the outputs
    group: object  # whom the offsets are for (kip447.GroupMetadata, or a group id)
    sealed: list[int]  # state partitions whose writes it carries
    begin_next: bool
    started: float
    counts: dict  # the counters as the commit was cut (for the watch)
    published_ms: list[int]  # Kafka timestamps of the terminal events it publishes


class Checkpoint:
    """The worker's commits, one at a time, in the steps above."""

    def __init__(
        self,
        producer,
        outputs: Outbox,
        changelog: Outbox,
        store: StateStore,
        *,
        exactly_once: bool,
        consumer: GroupPort | None,
        check_member: Callable[[], None],
        take_published: Callable[[], list[int]],
        counts: Counter[str],
        seconds: Counter[str],
        fatal: Fatal,
        watch: CommitWatch | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.producer = producer  # aiokafka's; transactional with exactly_once
        self.outputs = outputs  # outputs, dead letters, re-key records
        self.changelog = changelog  # the held table's changelog
        self.store = store
        self.exactly_once = exactly_once
        self.consumer = consumer  # at_least_once commits the offsets through it
        self.watch = watch
        self.counts = counts
        self.seconds = seconds  # wall time by step, for /stats
        self.last_seconds = 0.0  # the last commit's duration
        self._check_member = check_member
        self._take_published = take_published
        self._fatal = fatal
        self._clock = clock
        self._idle = asyncio.Event()  # no commit in flight
        self._idle.set()

    async def start(self) -> None:
        """Start the producer and, with exactly_once, the first transaction.

        With a transactional id, the start fences the previous incarnation of
        this worker and aborts its open transaction.
        """
        await self.producer.start()
        if self.exactly_once:
            await self.producer.begin_transaction()

    async def stop(self) -> None:
        await self.producer.stop()

    @property
    def in_flight(self) -> bool:
        """A commit is cut and not finished yet."""
        return not self._idle.is_set()

    async def finished(self) -> None:
        """Wait until no commit is in flight."""
        await self._idle.wait()

    async def commit(self, offsets: dict, group, *, handled: bool = True) -> None:
        """A whole commit, cut and finished, the next transaction begun."""
        cut = await self.cut(offsets, group, handled=handled)
        if cut is not None:
            await self.finish(cut)

    async def cut(
        self, offsets: dict, group, *, handled: bool, begin_next: bool = True
    ) -> Cut | None:
        """Steps 1-3, while no record is handled. None: nothing to commit.

        `offsets`: what the commit carries; `handled`: records were handled since the
        last commit (a commit is made also for a sweep's writes and records alone).
        """
        await self.finished()  # the previous commit has ended
        if not handled and not self.store.dirty_partitions() and not self.outputs.pending:
            return None
        self._idle.clear()
        self._check_member()  # at_least_once: a zombie produces nothing
        # 1. the state written so far becomes this commit's; new writes open a new layer
        cut = Cut(
            offsets,
            group,
            self.store.seal(),
            begin_next,
            self._clock(),
            dict(self.counts),
            self._take_published(),
        )
        try:
            # 2. one changelog record per key changed: its last value
            for partition in cut.sealed:
                self.store.send_changelog(partition, self.changelog.add)
            # 3. every batch to the producer, full or not
            await self.outputs.flush()
            if self.exactly_once:
                await self.changelog.flush()
        except Exception as exc:
            self._fatal("commit failed: records not handed to the producer", exc)
        return cut

    async def finish(self, cut: Cut) -> None:
        """Steps 4-9, while the next records are handled."""
        producer = self.producer
        try:
            if self.exactly_once:
                # 4. every record of the transaction written before its offsets commit:
                # a failed send (broker restart, expired batch) fails the whole transaction
                with self._timed("commit_delivered"):
                    await self.outputs.delivered()
                    last = await self.changelog.delivered()
                # 5. the group's coordinator refuses them once the generation is over
                with self._timed("commit_offsets"):
                    if cut.offsets:
                        await producer.send_offsets_to_transaction(cut.offsets, cut.group)
                # 6.
                with self._timed("commit_end"):
                    await producer.commit_transaction()
                # 7.
                if cut.begin_next:
                    await producer.begin_transaction()
            else:
                # 4. a marker saved before its terminal record was written would drop
                # that record on replay
                await self.outputs.delivered()
                # 5.
                self._check_member()
                # 6.
                await self.changelog.flush()
                last = await self.changelog.delivered()
                # 7.
                if cut.offsets and not await self.consumer.commit_offsets(cut.offsets):
                    # A rebalance is under way: the records are read again; their outputs
                    # went out already, so they repeat exactly. The partitions may have had
                    # another owner meanwhile (this worker paused past its session), whose
                    # changelog records lie before this commit's: RocksDB keeps the offset
                    # it had, so that the next restore here reads those too (past them, a
                    # marker of that owner's would be missing here, and a stale flush could
                    # put a RUNNING after its terminal).
                    log.warning("offset commit refused: %s will be read again", sorted(cut.offsets))
                    last = {}
        except Exception as exc:
            if self.watch is not None:
                self.watch.commit_failed()
            if is_fencing(exc):
                self._fatal("fenced: this worker no longer owns its partitions", exc)
            self._fatal("commit failed: a record or the transaction was not written", exc)
        # 8.
        topic = self.store.changelog_topic
        self.store.committed({p: last[(topic, p)] for p in cut.sealed if (topic, p) in last})
        # 9.
        self.last_seconds = self._clock() - cut.started
        self.seconds["commit"] += self.last_seconds
        self.counts["commits"] += 1
        if self.watch is not None:
            self.watch.committed(self.last_seconds, cut.offsets, cut.counts, cut.published_ms)
        self._idle.set()

    async def send_full(self) -> None:
        """Hand the output batches that filled up to the producer (after a batch, a sweep).

        While a commit is in flight they wait for the next one, and records go on
        being handled into new batches, up to QUEUED_BYTES_MAX; past it, this waits
        for the commit to finish.
        """
        outputs = self.outputs
        if not outputs.has_full:
            return
        self._check_member()
        if self.in_flight:
            if outputs.full_bytes < QUEUED_BYTES_MAX:
                return
            waited = self._clock()
            await self.finished()
            self.seconds["handle_wait_commit"] += self._clock() - waited
        try:
            await outputs.send_full()
        except Exception as exc:
            self._fatal("sending records", exc)

    @contextmanager
    def _timed(self, step: str) -> Iterator[None]:
        started = self._clock()
        yield
        self.seconds[step] += self._clock() - started
