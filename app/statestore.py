"""Held state per partition: Faust's RocksDB store plus its changelog topic.

Exactly-once needs the local store to hold only what Kafka committed. Writes
made while a partition's transaction is open go to an in-memory overlay (reads
see it first); the commit sends the overlay to the changelog inside that
transaction (the last value of each key only), and only when the transaction
has committed are they written to RocksDB, in one write batch with the
changelog offset they reach. A worker killed at any moment therefore
restarts from a RocksDB that matches a committed changelog offset, and Faust's
recovery replays the committed changelog from there (read_committed): nothing
from an aborted transaction survives. The pattern is Kafka Streams' and Quix
Streams' (state written behind the commit).

With at_least_once the same write-behind holds, without a transaction: the
commit writes the outputs, then the changelog, then the offsets, then RocksDB,
so the state never gets ahead of the records it stands for.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from rocksdict import WriteBatch

from .heldstate import INDEX_PREFIX, index_upper_bound

_MISSING = object()


class StateStore:
    def __init__(self, table=None) -> None:
        self.table = table
        self._overlay: dict[int, dict[bytes, bytes | None]] = {}

    def bind(self, table) -> None:
        """The Faust table whose RocksDB and changelog this store writes."""
        self.table = table

    def _db(self, partition: int):
        return self.table.data._db_for_partition(partition)

    def get(self, partition: int, key: bytes) -> bytes | None:
        overlay = self._overlay.get(partition)
        if overlay is not None:
            value = overlay.get(key, _MISSING)
            if value is not _MISSING:
                return value
        return self._db(partition).get(key)

    def apply(self, partition: int, writes: dict[bytes, bytes | None]) -> None:
        # Sent to the changelog at commit (send_changelog): one record per key and
        # transaction, however often the key changed in between.
        self._overlay.setdefault(partition, {}).update(writes)

    @property
    def changelog_topic(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def send_changelog(self, partition: int, add) -> int:
        """Append this partition's uncommitted writes to the commit, last value per key.

        `add(topic, partition, key, value)` appends one record to the engine's
        outbox (inside the transaction, with exactly_once). Returns how many.
        """
        topic = self.changelog_topic
        db = self._db(partition)
        sent = 0
        for key, value in self._overlay.get(partition, {}).items():
            if value is None and db.get(key) is None:
                continue  # written and deleted within this transaction: the changelog never had it
            add(topic, partition, key, value)
            sent += 1
        return sent

    def due(self, partition: int, now_ms: int, limit: int) -> list[bytes]:
        """Index keys due at now_ms, oldest first; reads only those, never the whole store."""
        bound = index_upper_bound(now_ms)
        overlay = self._overlay.get(partition, {})
        from_db = []
        for key in self._db(partition).keys(from_key=INDEX_PREFIX):
            if key >= bound or len(from_db) >= limit:
                break
            from_db.append(key)
        if not overlay:
            return from_db
        pending = sorted(k for k in overlay if k[:1] == INDEX_PREFIX and k < bound)
        merged = []
        for key in heapq.merge(from_db, pending):
            if (not merged or merged[-1] != key) and overlay.get(key, b"") is not None:
                merged.append(key)
        return merged[:limit]

    def dirty_partitions(self) -> set[int]:
        return {p for p, overlay in self._overlay.items() if overlay}

    def committed(self, partitions: Iterable[int], changelog_offsets: dict[int, int]) -> None:
        """The commit of these partitions' writes went through: make them durable locally.

        `changelog_offsets`: partition -> offset of the last changelog record the
        commit wrote, stored with the state for Faust's recovery to start after.
        """
        store = self.table.data
        for partition in partitions:
            overlay = self._overlay.pop(partition, None)
            if not overlay:
                continue
            batch = WriteBatch(raw_mode=True)
            for key, value in overlay.items():
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            offset = changelog_offsets.get(partition)
            if offset is not None:
                batch.put(store.offset_key, str(offset).encode())
            self._db(partition).write(batch)

    def discard(self, partitions: Iterable[int]) -> None:
        """Their transactions were (or will be) aborted: forget what they wrote."""
        for partition in partitions:
            self._overlay.pop(partition, None)
