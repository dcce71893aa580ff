"""The operator surface without Kafka: the held index, the live view's reads, metrics, commands."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rocksdict import Options, Rdict

from app.core.heldstate import Held, Marker, Source, decode_state, encode_state, state_key
from app.ops.cli import format_running, tail_line
from app.ops.config import Settings
from app.ops.metrics import Metrics, _BatchHistogram
from app.state.inflight import (
    HELD_INDEX_PREFIX,
    InFlight,
    index_held,
    parse_index_value,
)
from app.state.statestore import StateStore

OFFSET_KEY = b"__faust\x00offset__"


@pytest.fixture
def db(tmp_path):
    rdict = Rdict(str(tmp_path / "p0"), options=Options(raw_mode=True))
    yield rdict
    rdict.close()


def store_over(db) -> StateStore:
    table = SimpleNamespace(
        data=SimpleNamespace(_db_for_partition=lambda p: db, offset_key=OFFSET_KEY),
        changelog_topic=SimpleNamespace(get_topic_name=lambda: "held-changelog"),
    )
    return StateStore(table)


def running_event(eid: str, ts: int, **fields) -> Source:
    body = orjson.dumps({"execution_id": eid, "status": "RUNNING", **fields})
    return Source("raw", 0, ts, ts, eid.encode(), body)


def held(eid: str, ts: int, stale: bool = False, **fields) -> bytes:
    return encode_state(Held(ts, ts + 300_000, stale, (running_event(eid, ts, **fields),)))


def held_index(db) -> dict[bytes, tuple[int, bool]]:
    out = {}
    for key, value in db.items(from_key=HELD_INDEX_PREFIX):
        if not key.startswith(HELD_INDEX_PREFIX):
            break
        out[key[1:]] = parse_index_value(value)
    return out


@pytest.mark.parametrize("stale", [False, True])
@pytest.mark.parametrize("rekeyed", [False, True])
def test_the_held_index_reads_what_decode_state_reads(stale, rekeyed):
    # the index copies bytes out of app.core.heldstate's layout: the two must agree
    value = encode_state(
        Held(1_700_000_123_456, 1_700_000_423_456, stale, (running_event("e", 1),), rekeyed)
    )
    batch = SimpleNamespace(put=lambda k, v: written.update({k: v}), delete=None)
    written: dict = {}
    index_held(batch, state_key("e"), value)
    state = decode_state(value)
    assert written == {b"he": written[b"he"]}
    assert parse_index_value(written[b"he"]) == (state.first_ts_ms, state.stale_emitted)


def test_commits_keep_the_held_index_to_the_held_executions_only(db):
    store = store_over(db)
    store.apply(0, {state_key("a"): held("a", 10), state_key("b"): held("b", 20)})
    store.seal()
    store.committed({0: 5})
    assert held_index(db) == {b"a": (10, False), b"b": (20, False)}
    # a finishes (marker), b is flushed as stale, c is finished without a RUNNING
    store.apply(0, {state_key("a"): encode_state(Marker(99)), state_key("b"): held("b", 20, True)})
    store.apply(0, {state_key("c"): encode_state(Marker(99))})
    store.seal()
    store.committed({0: 9})
    assert held_index(db) == {b"b": (20, True)}
    store.apply(0, {state_key("b"): None})  # its retention ended
    store.seal()
    store.committed({0: 12})
    assert held_index(db) == {}


def test_the_live_view_pages_filters_and_sorts_without_bodies(db):
    store = store_over(db)
    states = {}
    for i in range(5):
        eid = f"x{i}"
        agent = "a1" if i % 2 == 0 else "a2"
        states[state_key(eid)] = held(
            eid, 1000 + i, agent_id=agent, route_id=f"r{i % 2}", input_body="secret"
        )
    store.apply(0, states)
    store.seal()
    store.committed({0: 1})
    view = InFlight(store, lambda: {0}, {"a1": 1})
    page = asyncio.run(view.running(limit=2))
    assert page["total"] == 5
    assert [r["execution_id"] for r in page["executions"]] == ["x0", "x1"]  # oldest first
    assert b"secret" not in orjson.dumps(page)
    newest = asyncio.run(view.running(limit=2, offset=1, newest_first=True))
    assert [r["execution_id"] for r in newest["executions"]] == ["x3", "x2"]
    only = asyncio.run(view.running(agent="a2", limit=10))
    assert [r["execution_id"] for r in only["executions"]] == ["x1", "x3"]
    assert only["total"] == 2
    assert asyncio.run(view.running(agent="a1", route="r1"))["total"] == 0
    census = asyncio.run(view.census())
    assert census.held == {0: 5} and census.oldest_ms == {0: 1000} and census.stale == {0: 0}
    agents = {a["agent_id"]: a for a in asyncio.run(view.agents())["agents"]}
    assert agents["a1"] == {
        "agent_id": "a1",
        "protocol_version": 1,
        "registered": True,
        "in_flight": 3,
        "stale_flushed": 0,
    }
    assert agents["a2"]["registered"] is False and agents["a2"]["in_flight"] == 2
    assert view.execution(0, "x1")["state"] == "running"
    assert view.execution(0, "nope")["state"] == "unknown"


def test_a_commit_s_latencies_land_in_their_buckets():
    hist = _BatchHistogram((0.1, 1.0, 10.0))
    hist.observe_all([0.05, 0.1, 0.5, 2.0, 20.0])
    hist.observe_all([])
    assert hist.counts == [2, 3, 4] and hist.total == 5
    assert hist.sum == pytest.approx(22.65)


def test_the_exposition_parses_and_counts_committed_records_only():
    engine = SimpleNamespace(
        counts={"rebalances": 2}, assigned=frozenset(), owned_state=frozenset(), port=None
    )
    census = SimpleNamespace(census=None)
    metrics = Metrics(engine, census)
    engine.counts["merged"] = 7  # handled, not committed yet: not counted
    metrics.committed(0.02, {}, {"merged": 3, "dlq_invalid-json": 1, "held_expired": 2}, [])
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for s in family.samples
    }
    assert samples[("cameleer_output_records_total", (("origin", "merged"),))] == 3
    assert samples[("cameleer_dead_letters_total", (("reason", "invalid-json"),))] == 1
    assert samples[("cameleer_dead_letters_total", (("reason", "too-large"),))] == 0
    assert samples[("cameleer_dropped_total", (("why", "retention"),))] == 2
    assert samples[("cameleer_rebalances_total", ())] == 2
    assert samples[("cameleer_commit_seconds_count", ())] == 1
    assert samples[("cameleer_transactions_total", (("result", "committed"),))] == 1


def test_tail_and_running_lines():
    line = tail_line(
        "merged",
        orjson.dumps(
            {"status": "COMPLETED", "execution_id": "e1", "route_id": "r", "duration_ms": 5}
        ),
    )
    assert line.split() == ["merged", "COMPLETED", "e1", "r", "5", "ms"]
    assert tail_line("", b"not json").split()[:2] == ["?", "?"]
    table = format_running(
        [
            {
                "execution_id": "e1",
                "agent_id": "a",
                "route_id": "r",
                "start_time": "t",
                "age_s": 75.0,
                "stale_flushed": True,
                "partition": 2,
            }
        ]
    ).splitlines()
    assert table[1].split() == ["e1", "a", "r", "t", "1m15s", "yes", "2"]


def test_the_web_host_binds_and_the_advertised_host_defaults_sensibly():
    assert Settings.from_env({}).web_host == "0.0.0.0"
    assert Settings.from_env({}).web_advertised_host == socket.gethostname()
    local = Settings.from_env({"CAMELEER_WEB_HOST": "127.0.0.1"})
    assert (local.web_host, local.web_advertised_host) == ("127.0.0.1", "127.0.0.1")
    pod = Settings.from_env({"CAMELEER_WEB_ADVERTISED_HOST": "10.1.2.3"})
    assert (pod.web_host, pod.web_advertised_host) == ("0.0.0.0", "10.1.2.3")


def test_the_chaos_tally_explains_only_a_paused_workers_fenced_exit():
    from chaos.run import Tally

    fenced = "[CRITICAL] fenced: this worker no longer owns its partitions: ..."
    tally = Tally(zombies=[(1, 2)])
    tally.crashes = [(1, 2, fenced)]
    assert tally.unexplained_crashes() == []
    # the same worker's next start, another worker, or another reason: unexplained
    others = [(1, 3, fenced), (0, 2, fenced), (1, 2, "[CRITICAL] commit failed: ...")]
    tally.crashes += others
    assert tally.unexplained_crashes() == others
