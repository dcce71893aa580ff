"""Where the engine stands on each source partition of its assignment, and the safety nets.

`Positions` holds the current assignment: the group generation it was made in,
the seek it came from (its epoch), the next offset to handle on each source
partition (raw and re-key), and the offset committed (or being committed) there.
`follows` checks that a batch carries on where the last one ended.

Raw partition p is handled in state partition p % state_partitions (its re-key
and changelog partitions); the raw topic may grow, the state's topics cannot
(`layout_problem`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable

from app.engine.ports import Fatal
from app.kafka.kip447 import GroupMetadata

log = logging.getLogger(__name__)


class Positions:
    def __init__(
        self,
        counts: Counter[str],
        raw_topic: str,
        rekey_topic: str,
        state_partitions: int,
        first_record_at: Callable[..., Awaitable[int | None]],
        fatal: Fatal,
    ) -> None:
        self.counts = counts
        self.raw_topic = raw_topic
        self.rekey_topic = rekey_topic
        self.state_partitions = state_partitions
        self._first_record_at = first_record_at  # async (tp, offset) -> first record there
        self._fatal = fatal
        self.group: GroupMetadata | None = None  # the generation of the current assignment
        self.epoch = 0  # the seek the current positions come from
        self._epoch_changed = asyncio.Condition()
        self._closed = False
        self._next: dict = {}  # source TopicPartition -> next offset to handle
        self._committed: dict = {}  # source TopicPartition -> offset committed
        self._fresh: set = set()  # partitions whose first batch since the seek is due
        self._with_markers: set = set()  # raw partitions seen to hold transaction markers

    # ---- the assignment ---------------------------------------------------------------

    def assign(self, positions: dict, group: GroupMetadata) -> None:
        """A new assignment's source partitions, sought to the group's committed offsets."""
        self.group = group
        self._next = dict(positions)
        self._committed = dict(positions)
        self._fresh = set(positions)
        self._with_markers.clear()
        log.info(
            "generation %d: source partitions resume at %s",
            group.generation_id,
            {f"{tp.topic}[{tp.partition}]": offset for tp, offset in sorted(positions.items())},
        )

    async def sought(self, epoch: int) -> None:
        """The seek numbered `epoch` is done: batches fetched after it may be handled."""
        async with self._epoch_changed:
            self.epoch = max(self.epoch, epoch)
            self._epoch_changed.notify_all()

    async def wait_for_seek(self, epoch: int) -> None:
        """Wait until the seek numbered `epoch` is done, or `close` was called."""
        if epoch > self.epoch:
            async with self._epoch_changed:
                await self._epoch_changed.wait_for(lambda: self.epoch >= epoch or self._closed)

    async def close(self) -> None:
        """The engine stops: batches waiting for a seek give up."""
        self._closed = True
        async with self._epoch_changed:
            self._epoch_changed.notify_all()

    def revoke(self, tps: Iterable) -> None:
        for tp in tps:
            self._next.pop(tp, None)
            self._committed.pop(tp, None)
            self._fresh.discard(tp)
        if not self._next:
            self.group = None

    @property
    def assigned(self) -> frozenset:
        return frozenset(self._next)

    @property
    def owned_state(self) -> frozenset:
        """The state partitions this worker owns: those of its re-key partitions."""
        return frozenset(tp.partition for tp in self._next if tp.topic == self.rekey_topic)

    def state_partition(self, tp) -> int:
        """Where a source partition's records are handled (see app.engine.processor)."""
        return tp.partition % self.state_partitions if tp.topic == self.raw_topic else tp.partition

    def layout_problem(self, assigned: Iterable, changelog_topic: str) -> str | None:
        """Why an assignment (every active topic partition) cannot be worked, or None.

        Raw partition p must come with state partition p % state_partitions (its
        re-key and changelog partitions), and the internal topics must not have
        grown: an execution's state would be sought where it was never written.
        """
        tps = {(tp.topic, tp.partition) for tp in assigned}
        internal, count = (self.rekey_topic, changelog_topic), self.state_partitions
        for topic, partition in sorted(tps):
            if topic in internal and partition >= count:
                return (
                    f"{topic} has grown past the held state's {count} "
                    f"partitions (partition {partition} assigned); internal topics cannot "
                    "grow: stop the workers and see docs/growing-topics.md"
                )
        for topic, partition in sorted(tps):
            state = partition % count
            if topic == self.raw_topic or topic in internal:
                missing = [t for t in internal if (t, state) not in tps]
                if missing:
                    return (
                        f"{topic}[{partition}] was assigned without state partition {state} "
                        f"({', '.join(missing)}): the group's leader does not co-assign them "
                        "(an older worker version?); see docs/growing-topics.md"
                    )
        return None

    def get(self, tp, default: int = -1) -> int:
        """The next offset to handle on `tp`."""
        return self._next.get(tp, default)

    # ---- commits ----------------------------------------------------------------------

    @property
    def current(self) -> dict:
        """Source TopicPartition -> next offset to handle, on every assigned partition."""
        return dict(self._next)

    def moved(self) -> dict:
        """The partitions handled past the offset committed there, and their next offsets."""
        committed = self._committed
        return {tp: offset for tp, offset in self._next.items() if offset != committed.get(tp)}

    def committing(self, offsets: dict) -> None:
        """`offsets` are in a commit now (it exits the process if they do not go through)."""
        self._committed.update(offsets)

    @property
    def committed(self) -> dict:
        """Source TopicPartition -> offset committed (or being committed)."""
        return dict(self._committed)

    # ---- batches ----------------------------------------------------------------------

    def advance(self, tp, offset: int) -> None:
        """The records of `tp` before `offset` are handled."""
        self._next[tp] = offset

    async def follows(self, tp, records: list) -> list:
        """The part of a batch that follows the last record handled (safety nets).

        Nothing for a partition not assigned. aiokafka hands records on from where
        the engine sought, in order; these checks catch a delivery that does not.
        Each firing is logged with "safety net".
        """
        expected = self._next.get(tp)
        if expected is None or not records:
            return []
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
                self._fatal(
                    f"safety net: records skipped on {tp.topic}[{tp.partition}]",
                    RuntimeError(f"offset {first} read where {expected} was due (first: {found})"),
                )
            if not fresh:
                self._with_markers.add(tp)
        return records
