"""Each rule of the contract, in the real worker process against the real broker."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest

from app.core.heldstate import Held, decode_state

from .harness import (
    changelog,
    consume_until,
    event,
    for_key,
    partition_of,
    produce,
    settled,
    wait_for,
)

STALE_AFTER = 60


@pytest.fixture(scope="module")
def worker_env():
    return {"CAMELEER_STALE_AFTER": str(STALE_AFTER), "CAMELEER_MAX_RECORD_BYTES": "20000"}


def new_id() -> str:
    return f"exec-{uuid.uuid4()}"


def outputs_for(bootstrap, topics, eid: str, count: int = 1, timeout: float = 60.0):
    """Every output record of eid once `count` of them are out: a second record of the
    same execution, if the worker wrote one, is in the list too."""
    records = consume_until(
        bootstrap, topics.output, lambda rs: len(for_key(rs, eid)) >= count, timeout
    )
    assert len(for_key(records, eid)) >= count, f"{eid}: not {count} output records in time"
    return settle(bootstrap, topics, eid)


def settle(bootstrap, topics, eid: str):
    """Everything the worker emitted for eid's records produced so far (a barrier on
    eid's partition, then the output read to its end offsets beside the sentinel)."""
    return for_key(settled(bootstrap, topics, [partition_of(eid)]), eid)


def counter(worker, name: str) -> int:
    return worker.counts().get(name, 0)


def test_coalesce_merge_nulls_absent_unknown_and_nested(bootstrap, topics, worker):
    eid = new_id()
    running = event(
        eid,
        "RUNNING",
        agent_id="agent-1",
        route_id="orders",
        start_time="2026-11-26T10:00:00.123Z",
        headers={"a": "1", "b": "2"},
        processors=[{"id": "p1"}, {"id": "p2"}],
        future_field={"x": 1},
        kept_when_null="from-running",
    )
    terminal = event(
        eid,
        "FAILED",
        route_id=None,
        kept_when_null=None,
        headers={"c": "3"},
        processors=[{"id": "p9"}],
        error={"type": "Boom", "message": "it broke"},
        duration_ms=12,
        another_unknown=[1, 2, 3],
        output_body=None,  # null, and absent from the RUNNING event
    )
    produce(bootstrap, topics.raw, [(eid.encode(), running), (eid.encode(), terminal)])
    [out] = outputs_for(bootstrap, topics, eid)
    assert out.origin == "merged"
    assert out.key == eid.encode()
    assert out.json == {
        "execution_id": eid,
        "status": "FAILED",
        "agent_id": "agent-1",
        "route_id": "orders",
        "start_time": "2026-11-26T10:00:00.123Z",
        "headers": {"c": "3"},  # replaced whole, not deep-merged
        "processors": [{"id": "p9"}],  # arrays too
        "future_field": {"x": 1},  # unknown RUNNING field kept
        "kept_when_null": "from-running",
        "error": {"type": "Boom", "message": "it broke"},
        "duration_ms": 12,
        "another_unknown": [1, 2, 3],
        "output_body": None,  # every field present in either event is present
    }
    assert settle(bootstrap, topics, eid) == [out]


def test_terminal_only_is_emitted_byte_for_byte(bootstrap, topics, worker):
    eid = new_id()
    raw = b'{"execution_id": "%s", "status": "COMPLETED", "duration_ms": 1.50, "z": null}' % (
        eid.encode()
    )
    produce(bootstrap, topics.raw, [(eid.encode(), raw, [("trace", b"abc")])])
    [out] = outputs_for(bootstrap, topics, eid)
    assert out.origin == "terminal-only"
    assert out.value == raw
    assert out.headers["trace"] == b"abc"


def test_duplicate_terminal_is_dropped_and_counted(bootstrap, topics, worker):
    eid = new_id()
    before = counter(worker, "duplicate_terminal")
    done = event(eid, "COMPLETED", duration_ms=5)
    produce(
        bootstrap,
        topics.raw,
        [(eid.encode(), event(eid, "RUNNING", route_id="r")), (eid.encode(), done)]
        + [(eid.encode(), done)] * 2,
    )
    outs = settle(bootstrap, topics, eid)
    assert [o.origin for o in outs] == ["merged"]
    assert counter(worker, "duplicate_terminal") - before == 2


def test_running_after_terminal_is_dropped_and_counted(bootstrap, topics, worker):
    eid = new_id()
    before = counter(worker, "running_after_terminal")
    produce(
        bootstrap,
        topics.raw,
        [
            (eid.encode(), event(eid, "COMPLETED", duration_ms=5)),
            (eid.encode(), event(eid, "RUNNING", route_id="late")),
        ],
    )
    outs = settle(bootstrap, topics, eid)
    assert [o.origin for o in outs] == ["terminal-only"]
    assert "route_id" not in outs[0].json
    assert counter(worker, "running_after_terminal") - before == 1


def test_repeated_running_events_merge_later_over_earlier(bootstrap, topics, worker):
    eid = new_id()
    produce(
        bootstrap,
        topics.raw,
        [
            (eid.encode(), event(eid, "RUNNING", route_id="r", step="one", a=1)),
            (eid.encode(), event(eid, "RUNNING", step="two", a=None, b=2)),
            (eid.encode(), event(eid, "COMPLETED", duration_ms=7)),
        ],
    )
    [out] = outputs_for(bootstrap, topics, eid)
    assert out.json == {
        "execution_id": eid,
        "status": "COMPLETED",
        "route_id": "r",
        "step": "two",
        "a": 1,
        "b": 2,
        "duration_ms": 7,
    }


def test_stale_running_is_flushed_once_from_its_kafka_timestamp_then_merged(
    bootstrap, topics, worker
):
    old, fresh = new_id(), new_id()
    long_ago = int(time.time() * 1000) - (STALE_AFTER + 30) * 1000
    old_running = event(old, "RUNNING", route_id="stuck", start_time="long ago")
    produce(bootstrap, topics.raw, [(old.encode(), old_running)], timestamp_ms=long_ago)
    produce(bootstrap, topics.raw, [(fresh.encode(), event(fresh, "RUNNING", route_id="new"))])
    [stale] = outputs_for(bootstrap, topics, old)
    assert stale.origin == "stale-running"
    assert stale.value == old_running  # one RUNNING: its own bytes
    # Emitted once: later sweeps pass over it (wait for two more sweeps to run).
    sweeps = counter(worker, "sweep_rounds")
    wait_for("two more sweeps", lambda: counter(worker, "sweep_rounds") >= sweeps + 2, 30)
    assert settle(bootstrap, topics, old) == [stale]
    # The fresh RUNNING (Kafka timestamp now) is not due yet: nothing out, and held.
    assert settle(bootstrap, topics, fresh) == []
    assert_held(bootstrap, topics, fresh)
    # The terminal event still brings the full merge, after the RUNNING.
    produce(bootstrap, topics.raw, [(old.encode(), event(old, "COMPLETED", duration_ms=1))])
    outs = outputs_for(bootstrap, topics, old, count=2)
    assert [o.origin for o in outs] == ["stale-running", "merged"]
    assert outs[1].json["route_id"] == "stuck" and outs[1].json["status"] == "COMPLETED"
    assert settle(bootstrap, topics, old) == outs


def test_a_stale_running_too_large_for_the_output_is_not_flushed_and_its_merge_dead_letters(
    bootstrap, topics, worker
):
    big = new_id()
    control = new_id()  # a small stale RUNNING on the same partition, due just after it
    while partition_of(control) != partition_of(big):
        control = new_id()
    before = counter(worker, "stale_too_large")
    long_ago = int(time.time() * 1000) - (STALE_AFTER + 30) * 1000
    running = event(big, "RUNNING", input_body="i" * 20_000)
    produce(bootstrap, topics.raw, [(big.encode(), running)], timestamp_ms=long_ago)
    small = event(control, "RUNNING", route_id="small")
    produce(bootstrap, topics.raw, [(control.encode(), small)], timestamp_ms=long_ago + 1)
    # the sweep went past it (its control is flushed), counted, and emitted nothing for it
    [flushed] = outputs_for(bootstrap, topics, control)
    assert (flushed.origin, flushed.value) == ("stale-running", small)
    assert counter(worker, "stale_too_large") - before == 1
    assert settle(bootstrap, topics, big) == []
    assert_held(bootstrap, topics, big)  # still held, for its terminal
    # its terminal: the merge is too large too, the two events go to the DLQ
    terminal = event(big, "COMPLETED", duration_ms=1)
    produce(bootstrap, topics.raw, [(big.encode(), terminal)])
    dlq = consume_until(bootstrap, topics.dlq, lambda rs: len(for_key(rs, big)) >= 2)
    dead = for_key(dlq, big)
    assert [d.value for d in dead] == [running, terminal]
    assert {d.headers["cameleer-error"] for d in dead} == {b"too-large"}
    assert settle(bootstrap, topics, big) == []


def test_v2_records_pass_through_byte_for_byte(bootstrap, topics, worker):
    eid = new_id()
    raw = b'{"protocol_version":2, "execution_id":"%s","status":"COMPLETED","x":  1}' % eid.encode()
    headers = [("h1", b"v1"), ("h2", b"")]
    produce(bootstrap, topics.raw, [(eid.encode(), raw, headers)])
    [out] = outputs_for(bootstrap, topics, eid)
    assert out.origin == "passthrough"
    assert out.value == raw
    assert out.key == eid.encode()
    assert out.headers["h1"] == b"v1" and out.headers["h2"] == b""
    # no execution state read or written for it: the changelog read past a sentinel's
    # marker, written after it on its partition, has nothing of it
    states = settled(bootstrap, topics, [partition_of(eid)], changelog(topics))
    assert not [r for r in states if r.key and eid.encode() in r.key]


def test_v2_record_with_missing_or_wrong_key_is_rekeyed(bootstrap, topics, worker):
    a, b = new_id(), new_id()
    raw_a = event(a, "COMPLETED", protocol_version=2)
    raw_b = event(b, "FAILED", protocol_version=2)
    produce(bootstrap, topics.raw, [(None, raw_a), (b"agent-key", raw_b)])
    [out_a] = outputs_for(bootstrap, topics, a)
    [out_b] = outputs_for(bootstrap, topics, b)
    assert (out_a.value, out_b.value) == (raw_a, raw_b)
    assert out_a.origin == out_b.origin == "passthrough"


def test_protocol_version_comes_from_the_agent_registry(bootstrap, topics, worker):
    produce(
        bootstrap,
        topics.agents,
        [(b"agent-v2", orjson.dumps({"agent_id": "agent-v2", "protocol_version": 2}))],
    )
    wait_for("the worker to read the registration", lambda: (worker.stats() or {}).get("agents"))
    eid = new_id()
    # a RUNNING from a registered v2 agent is passed through, not held
    raw = event(eid, "RUNNING", agent_id="agent-v2")
    produce(bootstrap, topics.raw, [(eid.encode(), raw)])
    [out] = outputs_for(bootstrap, topics, eid)
    assert (out.origin, out.value) == ("passthrough", raw)
    # the record's own field wins over the registry
    own = new_id()
    produce(
        bootstrap,
        topics.raw,
        [(own.encode(), event(own, "RUNNING", agent_id="agent-v2", protocol_version=1))],
    )
    assert settle(bootstrap, topics, own) == []  # held as v1: nothing out...
    assert_held(bootstrap, topics, own)  # ...and in the held state


def test_v2_record_misread_as_v1_keeps_its_content(bootstrap, topics, worker):
    eid = new_id()  # unregistered agent, no protocol_version: read as v1, terminal-only
    raw = event(eid, "COMPLETED", agent_id="never-registered", output_body="x" * 100)
    produce(bootstrap, topics.raw, [(eid.encode(), raw)])
    [out] = outputs_for(bootstrap, topics, eid)
    assert out.value == raw


@pytest.mark.parametrize(("running_key", "terminal_key"), [(None, "eid"), ("other", None)])
def test_records_with_missing_or_other_keys_still_merge(
    bootstrap, topics, worker, running_key, terminal_key
):
    eid = new_id()

    def key(k):
        return eid.encode() if k == "eid" else (None if k is None else f"{k}-{eid}".encode())

    produce(bootstrap, topics.raw, [(key(running_key), event(eid, "RUNNING", route_id="r"))])
    # the RUNNING is held (via the re-key topic) before its terminal event is produced
    held = consume_until(
        bootstrap, changelog(topics), lambda rs: any(r.key == b"e" + eid.encode() for r in rs), 30
    )
    assert any(r.key == b"e" + eid.encode() for r in held)
    produce(bootstrap, topics.raw, [(key(terminal_key), event(eid, "COMPLETED", duration_ms=3))])
    [out] = outputs_for(bootstrap, topics, eid)
    assert out.origin == "merged"
    assert out.key == eid.encode()
    assert out.json["route_id"] == "r" and out.json["duration_ms"] == 3


def assert_held(bootstrap, topics, eid: str) -> None:
    """eid's last state in the changelog (read past a barrier) is a held RUNNING."""
    states = settled(bootstrap, topics, [partition_of(eid)], changelog(topics))
    mine = [r.value for r in states if r.key == b"e" + eid.encode()]
    assert mine and mine[-1] is not None, f"{eid}: nothing held"
    assert isinstance(decode_state(mine[-1]), Held), decode_state(mine[-1])
