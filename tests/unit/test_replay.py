"""A restore's write path on a real RocksDB (rocksdict), without Kafka: the changelog the
commits send, replayed into an empty store, gives the state the commits left."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from rocksdict import Options, Rdict

from app.core import merge
from app.core.heldstate import (
    INDEX_PREFIX,
    STATE_PREFIX,
    Held,
    Marker,
    Pending,
    Source,
    decode_state,
    due_of,
    encode_state,
    in_changelog,
    index_key,
    parse_index_key,
    state_key,
)
from app.state.inflight import HELD_INDEX_PREFIX
from app.state.statestore import StateStore, has_held_index, replay

OFFSET_KEY = b"__faust\x00offset__"


@pytest.fixture
def dbs(tmp_path):
    opened = []

    def open_db(name: str) -> Rdict:
        db = Rdict(str(tmp_path / name), options=Options(raw_mode=True))
        opened.append(db)
        return db

    yield open_db
    for db in opened:
        db.close()


def src(eid: str, ts: int) -> Source:
    return Source("raw", 0, ts, ts, eid.encode(), b'{"status":"RUNNING"}')


def committing_store(db: Rdict) -> tuple[StateStore, list[SimpleNamespace]]:
    """A StateStore whose commits also append what they send to a changelog list."""
    changelog: list[SimpleNamespace] = []
    table = SimpleNamespace(
        data=SimpleNamespace(_db_for_partition=lambda p: db, offset_key=OFFSET_KEY),
        changelog_topic=SimpleNamespace(get_topic_name=lambda: "held-changelog"),
    )
    store = StateStore(table)

    def commit(writes: dict) -> None:
        store.apply(0, writes)
        store.seal()
        store.send_changelog(
            0,
            lambda topic, p, k, v: changelog.append(
                SimpleNamespace(key=k, value=v, offset=len(changelog))
            ),
        )
        store.committed({0: len(changelog) - 1})

    store.commit = commit
    return store, changelog


def by_prefix(db: Rdict, prefix: bytes) -> dict[bytes, bytes]:
    return {k: v for k, v in db.items() if k.startswith(prefix)}


def history(store) -> None:
    """Executions through their lives, with the writes app.core.merge makes."""
    rules = merge.Rules(stale_after_ms=1_000, dedupe_window_ms=10_000)
    for i in range(30):
        eid = f"x{i}"
        ts = 1_000 + i
        store.commit(
            {
                state_key(eid): encode_state(Held(ts, ts + 1_000, False, (src(eid, ts),))),
                index_key(ts + 1_000, eid): b"",
            }
        )
    for i in range(0, 30, 3):  # finished: a marker replaces the held RUNNING
        eid, ts = f"x{i}", 1_000 + i
        store.commit(
            {
                index_key(ts + 1_000, eid): None,
                state_key(eid): encode_state(Marker(50_000 + i)),
                index_key(50_000 + i, eid): b"",
            }
        )
    for i in range(1, 30, 3):  # flushed as stale: indexed again at its retention
        eid, ts = f"x{i}", 1_000 + i
        decision = merge.sweep_entry(
            eid,
            ts + 1_000,
            encode_state(Held(ts, ts + 1_000, False, (src(eid, ts),))),
            rules,
            ts + 1_000,
        )
        store.commit(decision.writes)
    for i in range(0, 9, 3):  # markers past their life: deleted
        eid = f"x{i}"
        store.commit({state_key(eid): None, index_key(50_000 + i, eid): None})
    store.commit(
        {
            state_key("p"): encode_state(Pending(7_000, 9_000, src("p", 7_000))),
            index_key(7_000, "p"): b"",
        }
    )


@pytest.mark.parametrize("fresh", [True, False], ids=["wiped", "any"])
def test_a_replayed_changelog_gives_the_state_the_commits_left(dbs, fresh):
    committed = dbs("committed")
    store, changelog = committing_store(committed)
    history(store)
    assert not [r for r in changelog if r.key[:1] == INDEX_PREFIX]  # states only

    restored = dbs("restored")
    held = set() if fresh else None
    for start in range(0, len(changelog), 7):  # fetched batches of 7
        replay(restored, changelog[start : start + 7], OFFSET_KEY, held)

    assert by_prefix(restored, STATE_PREFIX) == by_prefix(committed, STATE_PREFIX)
    assert by_prefix(restored, HELD_INDEX_PREFIX) == by_prefix(committed, HELD_INDEX_PREFIX)
    assert restored[OFFSET_KEY] == str(len(changelog) - 1).encode()
    # every state has its index entry at its due time; any other entry is an orphan
    # (an earlier state's), which the sweep deletes when it comes due
    index = by_prefix(restored, INDEX_PREFIX)
    assert set(by_prefix(committed, INDEX_PREFIX)) <= set(index)
    for key in index:
        due, eid = parse_index_key(key)
        stored = restored.get(state_key(eid))
        if stored is None or due_of(stored) != due:
            decision = merge.sweep_entry(eid, due, stored, merge.Rules(), due)
            assert decision.counter == "index_orphan" and decision.writes == {key: None}


def test_a_wiped_restore_deletes_no_held_index_key_that_is_not_there(dbs):
    db = dbs("p0")
    assert not has_held_index(db)
    held: set[bytes] = set()
    records = [
        SimpleNamespace(
            key=state_key("a"), value=encode_state(Held(1, 2, False, (src("a", 1),))), offset=0
        ),
        SimpleNamespace(key=state_key("b"), value=encode_state(Marker(9)), offset=1),
        SimpleNamespace(key=state_key("a"), value=encode_state(Marker(8)), offset=2),
    ]
    replay(db, records[:1], OFFSET_KEY, held)
    assert has_held_index(db) and held == {b"ha"}
    replay(db, records[1:], OFFSET_KEY, held)
    assert held == set() and not has_held_index(db)
    assert decode_state(db[state_key("a")]) == Marker(8)
    assert db[OFFSET_KEY] == b"2"


def test_index_records_of_an_older_changelog_are_derived_not_read(dbs):
    db = dbs("p0")
    records = [
        SimpleNamespace(key=index_key(5, "a"), value=b"", offset=0),  # written by older code
        SimpleNamespace(key=state_key("a"), value=encode_state(Marker(9)), offset=1),
        SimpleNamespace(key=index_key(9, "a"), value=b"", offset=2),
    ]
    replay(db, records, OFFSET_KEY)
    assert set(by_prefix(db, INDEX_PREFIX)) == {index_key(9, "a")}
    assert db[OFFSET_KEY] == b"2"


def test_due_of_reads_what_decode_state_reads():
    for state, due in [
        (Held(1, 2, False, (src("a", 1),)), 2),
        (Held(1, 7, True, (src("a", 1), src("a", 2))), 7),
        (Marker(1_700_000_000_123), 1_700_000_000_123),
        (Pending(5, 9, src("a", 5)), 5),
    ]:
        assert due_of(encode_state(state)) == due
    with pytest.raises(ValueError):
        due_of(b"Zxxxxxxxxxxxxxxxx")


def test_only_states_go_to_the_changelog():
    assert in_changelog(state_key("a"))
    assert not in_changelog(index_key(5, "a"))
