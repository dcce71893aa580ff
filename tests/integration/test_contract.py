"""Each rule of the contract, in the real worker process against the real broker."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest

from .harness import (
    barrier,
    consume_until,
    event,
    for_key,
    partition_of,
    produce,
)

STALE_AFTER = 60


@pytest.fixture(scope="module")
def worker_env():
    return {"CAMELEER_STALE_AFTER": str(STALE_AFTER), "CAMELEER_MAX_RECORD_BYTES": "20000"}


def new_id() -> str:
    return f"exec-{uuid.uuid4()}"


def outputs_for(bootstrap, topics, eid: str, count: int = 1, timeout: float = 60.0):
    records = consume_until(
        bootstrap, topics.output, lambda rs: len(for_key(rs, eid)) >= count, timeout
    )
    return for_key(records, eid)


def settle(bootstrap, topics, eid: str):
    """Everything the worker will ever emit for eid's records produced so far."""
    barrier(bootstrap, topics, partition_of(eid))
    return for_key(consume_until(bootstrap, topics.output, lambda rs: True, 5), eid)


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
    before = worker.counts().get("duplicate_terminal", 0)
    done = event(eid, "COMPLETED", duration_ms=5)
    produce(
        bootstrap,
        topics.raw,
        [(eid.encode(), event(eid, "RUNNING", route_id="r")), (eid.encode(), done)]
        + [(eid.encode(), done)] * 2,
    )
    outs = settle(bootstrap, topics, eid)
    assert [o.origin for o in outs] == ["merged"]
    assert worker.counts().get("duplicate_terminal", 0) - before == 2


def test_running_after_terminal_is_dropped_and_counted(bootstrap, topics, worker):
    eid = new_id()
    before = worker.counts().get("running_after_terminal", 0)
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
    assert worker.counts().get("running_after_terminal", 0) - before == 1


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
    sweeps = worker.counts().get("sweep_rounds", 0)
    deadline = time.monotonic() + 30
    while worker.counts().get("sweep_rounds", 0) < sweeps + 2 and time.monotonic() < deadline:
        time.sleep(0.2)  # poll the worker's sweep counter
    assert worker.counts().get("sweep_rounds", 0) >= sweeps + 2
    assert settle(bootstrap, topics, old) == [stale]
    # The fresh RUNNING (Kafka timestamp now) is not due yet.
    assert settle(bootstrap, topics, fresh) == []
    # The terminal event still brings the full merge, after the RUNNING.
    produce(bootstrap, topics.raw, [(old.encode(), event(old, "COMPLETED", duration_ms=1))])
    outs = outputs_for(bootstrap, topics, old, count=2)
    assert [o.origin for o in outs] == ["stale-running", "merged"]
    assert outs[1].json["route_id"] == "stuck" and outs[1].json["status"] == "COMPLETED"
    assert settle(bootstrap, topics, old) == outs


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
    # no execution state read or written for it
    changelog = consume_until(
        bootstrap, f"{topics.app_id}-held-changelog", lambda rs: False, timeout=2
    )
    assert not [r for r in changelog if r.key and eid.encode() in r.key]


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
    deadline = time.monotonic() + 30
    while (worker.stats() or {}).get("agents", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.2)  # poll until the worker has read the registration
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
    assert settle(bootstrap, topics, own) == []  # held as v1


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
    changelog = f"{topics.app_id}-held-changelog"
    held = consume_until(
        bootstrap, changelog, lambda rs: any(r.key == b"e" + eid.encode() for r in rs), 30
    )
    assert any(r.key == b"e" + eid.encode() for r in held)
    produce(bootstrap, topics.raw, [(key(terminal_key), event(eid, "COMPLETED", duration_ms=3))])
    [out] = outputs_for(bootstrap, topics, eid)
    assert out.origin == "merged"
    assert out.key == eid.encode()
    assert out.json["route_id"] == "r" and out.json["duration_ms"] == 3
