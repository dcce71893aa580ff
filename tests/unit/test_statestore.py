"""The state store on a real RocksDB (rocksdict), without Kafka: overlay and time index."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from rocksdict import Options, Rdict

from app.core import merge
from app.core.heldstate import Held, Source, encode_state, index_key, parse_index_key, state_key
from app.state.statestore import StateStore

OFFSET_KEY = b"__faust\x00offset__"


class CountingDB:
    """A real Rdict that counts the keys a caller reads from it."""

    def __init__(self, db: Rdict) -> None:
        self.db = db
        self.touched = 0

    def get(self, key):
        self.touched += 1
        return self.db.get(key)

    def keys(self, from_key=None):
        for key in self.db.keys(from_key=from_key):
            self.touched += 1
            yield key

    def __getattr__(self, name):
        return getattr(self.db, name)


class Changelog:
    """The changelog topic and the transaction's send, recording what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes | None, int]] = []

    def get_topic_name(self) -> str:
        return "held-changelog"

    def add(self, topic, partition, key, value):
        assert topic == "held-changelog"
        self.sent.append((key, value, partition))


@pytest.fixture
def db(tmp_path):
    rdict = Rdict(str(tmp_path / "p0"), options=Options(raw_mode=True))
    yield CountingDB(rdict)
    rdict.close()


def store_over(db: CountingDB) -> tuple[StateStore, Changelog]:
    changelog = Changelog()
    table = SimpleNamespace(
        data=SimpleNamespace(_db_for_partition=lambda p: db, offset_key=OFFSET_KEY),
        changelog_topic=changelog,  # only its name is used
    )
    return StateStore(table), changelog


def held(ts: int, due: int) -> bytes:
    return encode_state(Held(ts, due, False, (Source("raw", 0, 0, ts, None, b"{}"),)))


def sweep_due(store, rules, now: int) -> list[str]:
    """One sweep of partition 0 as the processor makes it: the counter of each entry."""
    counters = []
    for key in store.due(0, now, limit=10_000):
        due, eid = parse_index_key(key)
        decision = merge.sweep_entry(eid, due, store.get(0, state_key(eid)), rules, now)
        store.apply(0, decision.writes)
        counters.append(decision.counter)
    return counters


def test_a_sweep_reads_only_the_due_entries_of_100k_held_executions(db):
    rules = merge.Rules(stale_after_ms=1_000)
    now = 10_000_000
    for i in range(100_000):
        due = now - 5 if i % 10_000 == 0 else now + 1_000_000 + i  # 10 due, the rest not
        db.db[state_key(f"e{i}")] = held(due - 1_000, due)
        db.db[index_key(due, f"e{i}")] = b""
    store, _ = store_over(db)
    db.touched = 0
    assert sweep_due(store, rules, now) == ["stale_flushed"] * 10
    # 10 index keys + the first one not due + 10 state reads: about 10, not 100,000
    assert db.touched <= 25, db.touched


def test_retention_sweep_reads_only_the_due_entries_of_100k_flushed_executions(db):
    """Held RUNNINGs that were flushed stay indexed at the end of their retention;
    a sweep reads the ones due, not the 100,000 held."""
    rules = merge.Rules(stale_after_ms=1_000, held_retention_ms=1_000_000)
    now = 10_000_000
    for i in range(100_000):
        first = now - rules.held_retention_ms - 5 if i % 10_000 == 0 else now - 500_000 + i
        retain = first + rules.held_retention_ms
        src = (Source("raw", 0, 0, first, None, b"{}"),)
        db.db[state_key(f"e{i}")] = encode_state(Held(first, retain, True, src))
        db.db[index_key(retain, f"e{i}")] = b""
    store, _ = store_over(db)
    db.touched = 0
    assert sweep_due(store, rules, now) == ["held_expired"] * 10
    assert db.touched <= 25, db.touched
    assert store.due(0, now, limit=10_000) == []  # the expired ones left the index


def test_writes_stay_in_the_overlay_until_the_transaction_commits(db):
    store, changelog = store_over(db)

    store.apply(0, {b"ea": b"0", index_key(5, "a"): b""})
    store.apply(0, {b"ea": b"1"})
    assert store.get(0, b"ea") == b"1"  # reads see the open transaction
    assert db.db.get(b"ea") is None  # RocksDB does not, yet
    assert changelog.sent == []  # nothing is sent before the commit
    assert store.due(0, 10, 100) == [index_key(5, "a")]
    store.seal()
    store.send_changelog(0, changelog.add)
    # one record per key, its last value, in the partition's transaction; the time
    # index stays local (a restore derives it from the states)
    assert changelog.sent == [(b"ea", b"1", 0)]
    store.committed({0: 41})
    assert db.db.get(b"ea") == b"1"
    assert db.db.get(OFFSET_KEY) == b"41"  # the changelog offset the state reaches
    assert store.dirty_partitions() == set()


def test_an_aborted_transaction_leaves_rocksdb_as_it_was(db):
    db.db[b"ea"] = b"committed"
    store, _ = store_over(db)
    store.apply(0, {b"ea": None, b"eb": b"new"})
    assert store.get(0, b"ea") is None and store.get(0, b"eb") == b"new"
    store.discard([0])
    assert store.get(0, b"ea") == b"committed" and store.get(0, b"eb") is None


def test_a_deleted_index_entry_in_the_overlay_hides_the_stored_one(db):
    db.db[index_key(5, "a")] = b""
    db.db[index_key(6, "b")] = b""
    store, _ = store_over(db)
    store.apply(0, {index_key(5, "a"): None, index_key(4, "c"): b""})
    assert store.due(0, 10, 100) == [index_key(4, "c"), index_key(6, "b")]


def test_a_key_written_and_deleted_within_a_transaction_never_reaches_the_changelog(db):
    db.db[b"eb"] = b"marker"  # committed earlier: its deletion must be sent
    store, changelog = store_over(db)
    store.apply(0, {b"ec": b"pending", b"ea": b"held"})
    store.apply(0, {b"ec": None, b"eb": None, b"ea": b"marker"})
    store.seal()
    store.send_changelog(0, changelog.add)
    assert changelog.sent == [(b"ea", b"marker", 0), (b"eb", None, 0)]
