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

The RocksDB write batch of a commit also carries the local index of held
executions (app.state.inflight: b"h" keys, never in the changelog), so the live view
and the held gauges read the held executions without reading every marker.

`replay` is the other way in: changelog records read back (a restore, a
standby) written to a partition's RocksDB in one write batch per fetched batch,
with what is derived from them and the changelog offset they reach.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

from rocksdict import WriteBatch

from app.core.heldstate import (
    INDEX_PREFIX,
    STATE_PREFIX,
    due_of,
    in_changelog,
    index_key_of,
    index_upper_bound,
)
from app.state.inflight import HELD_INDEX_PREFIX, HELD_KIND, held_index_value, index_held

_MISSING = object()


def replay(db, records, offset_key: bytes, held: set[bytes] | None = None) -> int:
    """Write changelog records of one partition (in offset order, each with `.key`,
    `.value` and `.offset`) to its RocksDB `db` in one write batch: each state, the
    local indexes derived from it (its time-index entry, app.core.heldstate.in_changelog;
    the held index, app.state.inflight), and the offset of the last record under
    `offset_key`. Atomic: after a crash RocksDB holds all of it or none, and the
    restore starts again after the offset it holds. Index records of a changelog
    written before the time index was derived are skipped (derived instead).

    `held`: given when the partition's RocksDB had no held index as its restore
    began (a wiped or new worker): the held-index keys the restore has written since.
    A finished execution's state then deletes a held-index key only when there is
    one; otherwise one delete per dedupe marker would be a third of the writes.
    Returns the offset written (-1 for no records).
    """
    if not records:
        return -1
    batch = WriteBatch(raw_mode=True)
    put, delete = batch.put, batch.delete
    for record in records:
        key, value = record.key, record.value
        kind = key[:1] if key else b""
        if kind != STATE_PREFIX:
            if kind == INDEX_PREFIX or not kind:
                continue  # derived from the states; a keyless record is not a write
            if value is None:  # not the worker's: written as Faust would
                delete(key)
            else:
                put(key, value)
            continue
        hkey = HELD_INDEX_PREFIX + key[1:]
        if value is None:
            delete(key)
        else:
            put(key, value)
            put(index_key_of(due_of(value), key[1:]), b"")
            if value[:1] == HELD_KIND:
                put(hkey, held_index_value(value))
                if held is not None:
                    held.add(hkey)
                continue
        if held is None:
            delete(hkey)
        elif hkey in held:
            held.discard(hkey)
            delete(hkey)
    offset = records[-1].offset
    put(offset_key, str(offset).encode())
    db.write(batch)
    return offset


def has_held_index(db) -> bool:
    """Whether a partition's RocksDB holds any held-index key (one seek)."""
    for key in db.keys(from_key=HELD_INDEX_PREFIX):
        return key[:1] == HELD_INDEX_PREFIX
    return False


class StateStore:
    """RocksDB behind two in-memory layers: writes of the open transaction, and
    writes of the transaction being committed (`seal`ed). Reads see the open
    layer, then the sealed one, then RocksDB: records handled while a commit is
    on its way to the broker see every write before them.
    """

    def __init__(self, table=None) -> None:
        self.table = table
        self._open: dict[int, dict[bytes, bytes | None]] = {}
        self._sealed: dict[int, dict[bytes, bytes | None]] = {}

    def bind(self, table) -> None:
        """The Faust table whose RocksDB and changelog this store writes."""
        self.table = table

    def _db(self, partition: int):
        return self.table.data._db_for_partition(partition)  # noqa: SLF001 Faust's store offers no public read of a partition's RocksDB

    def get(self, partition: int, key: bytes) -> bytes | None:
        for layer in (self._open, self._sealed):
            overlay = layer.get(partition)
            if overlay:
                value = overlay.get(key, _MISSING)
                if value is not _MISSING:
                    return value
        return self._db(partition).get(key)

    def apply(self, partition: int, writes: dict[bytes, bytes | None]) -> None:
        # Sent to the changelog at commit (send_changelog): one record per key and
        # transaction, however often the key changed in between.
        self._open.setdefault(partition, {}).update(writes)

    @property
    def changelog_topic(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def dirty_partitions(self) -> set[int]:
        """Partitions with writes in the open transaction."""
        return {p for p, overlay in self._open.items() if overlay}

    def seal(self) -> list[int]:
        """The open writes become the commit's; new writes open a new layer."""
        assert not self._sealed, "the previous commit has not ended"
        self._sealed = {p: overlay for p, overlay in self._open.items() if overlay}
        self._open = {}
        return sorted(self._sealed)

    def send_changelog(self, partition: int, add) -> int:
        """Append the sealed writes of a partition to the commit, last value per key.

        `add(topic, partition, key, value)` appends one record to the engine's
        changelog outbox (inside the transaction, with exactly_once). Returns how many.
        """
        topic = self.changelog_topic
        db = self._db(partition)
        sent = 0
        for key, value in self._sealed.get(partition, {}).items():
            if not in_changelog(key):
                continue  # the time index: derived from the states at a restore
            if value is None and db.get(key) is None:
                continue  # written and deleted within this transaction: the changelog never had it
            add(topic, partition, key, value)
            sent += 1
        return sent

    def committed(self, changelog_offsets: dict[int, int]) -> None:
        """The commit of the sealed writes went through: make them durable locally.

        `changelog_offsets`: partition -> offset of the last changelog record the
        commit wrote, stored with the state for Faust's recovery to start after.
        """
        store = self.table.data
        sealed, self._sealed = self._sealed, {}
        for partition, overlay in sealed.items():
            batch = WriteBatch(raw_mode=True)
            for key, value in overlay.items():
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
                if key[:1] == STATE_PREFIX:  # the local held index (app.state.inflight), same batch
                    index_held(batch, key, value)
            offset = changelog_offsets.get(partition)
            if offset is not None:
                batch.put(store.offset_key, str(offset).encode())
            self._db(partition).write(batch)

    def due(self, partition: int, now_ms: int, limit: int) -> list[bytes]:
        """Index keys due at now_ms, oldest first; reads only those, never the whole store."""
        bound = index_upper_bound(now_ms)
        layers = [layer[partition] for layer in (self._open, self._sealed) if layer.get(partition)]
        from_db = []
        for key in self._db(partition).keys(from_key=INDEX_PREFIX):
            if key >= bound or len(from_db) >= limit:
                break
            from_db.append(key)
        if not layers:
            return from_db
        pending = [
            sorted(k for k in layer if k[:1] == INDEX_PREFIX and k < bound) for layer in layers
        ]
        merged: list[bytes] = []
        for key in heapq.merge(from_db, *pending):
            if merged and merged[-1] == key:
                continue
            if self._top(layers, key) is not None:
                merged.append(key)
        return merged[:limit]

    @staticmethod
    def _top(layers: list[dict], key: bytes) -> bytes | None:
        for layer in layers:
            value = layer.get(key, _MISSING)
            if value is not _MISSING:
                return value
        return b""  # only in RocksDB: there

    def scan(self, partition: int, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of the committed keys starting with `prefix`, in key order (RocksDB
        only: the open and sealed layers are not read)."""
        for key, value in self._db(partition).items(from_key=prefix):
            if not key.startswith(prefix):
                return
            yield key, value

    def discard(self, partitions: Iterable[int]) -> None:
        """Their transactions were (or will be) aborted: forget what they wrote."""
        for partition in partitions:
            self._open.pop(partition, None)
            self._sealed.pop(partition, None)
