"""How far the re-key topic is known complete, for the pending terminals.

A terminal event that may still have RUNNING events on their way through the
re-key topic from other raw partitions waits (app.core.merge, `Pending`; mixed
keying). The agent sent the RUNNING first, so it was in the raw topic before
the terminal, hence before the worker read the terminal at `since`. The
terminal may go out alone once every raw record present at some time t >= since
has been handled by its owner (the group's committed offsets have passed the raw
end offsets seen at t: the re-key record it caused was committed with them) and
this worker has read its re-key partitions up to where they ended after that.
The time t of the latest such snapshot is `safe_ms`: a pending terminal read
before it has seen every RUNNING that could come.

No clocks are compared across machines: `since` and the snapshots' times are
this worker's wall clock, and "before" is decided by offsets.

`RekeyBarrier.observe` is the pure step; app.engine.sweeper's `Sweeper` does
the reads (raw end offsets, then the group's stable committed offsets, then the
re-key partitions' high watermarks, in that order) once a second while
terminals are pending. The re-key ends are the log's end, not the last stable
offset: a transaction open there holds the latter below re-key records
committed after it.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_SNAPSHOTS = 120  # a minute or two of rounds; older ones are superseded anyway


@dataclass
class _Snapshot:
    taken_ms: int
    raw_ends: dict[int, int]  # raw partition -> end offset then
    rekey_ends: dict | None = None  # this worker's re-key partitions -> end, once raw passed


class RekeyBarrier:
    def __init__(self) -> None:
        self.safe_ms = -1
        self._snapshots: list[_Snapshot] = []

    def reset(self) -> None:
        """A new assignment: other re-key partitions, other positions."""
        self.safe_ms = -1
        self._snapshots.clear()

    def observe(
        self,
        now_ms: int,
        raw_ends: dict[int, int],
        committed: dict[int, int | None],
        rekey_ends: dict,
        positions: dict,
    ) -> int:
        """One round; returns `safe_ms`.

        raw_ends: raw partition -> end offset, read first; committed: raw partition ->
        the group's committed offset, read after; rekey_ends: re-key TopicPartition
        -> high watermark, read last; positions: re-key TopicPartition -> next offset
        this worker handles.
        """
        self._snapshots.append(_Snapshot(now_ms, dict(raw_ends)))
        del self._snapshots[:-MAX_SNAPSHOTS]
        for snap in self._snapshots:
            if snap.rekey_ends is None and all(
                (committed.get(p) or 0) >= end for p, end in snap.raw_ends.items()
            ):
                snap.rekey_ends = dict(rekey_ends)
        passed = [
            snap
            for snap in self._snapshots
            if snap.rekey_ends is not None
            and all(positions.get(tp, -1) >= end for tp, end in snap.rekey_ends.items())
        ]
        if passed:
            latest = max(snap.taken_ms for snap in passed)
            self.safe_ms = max(self.safe_ms, latest)
            self._snapshots = [s for s in self._snapshots if s.taken_ms > latest]
        return self.safe_ms
