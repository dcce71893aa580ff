"""The pure merge rules, no Kafka."""

from __future__ import annotations

import orjson
import pytest

from app import merge
from app.heldstate import Held, Marker, Source, decode_state, encode_state, index_key, state_key

RULES = merge.Rules(stale_after_ms=300_000, dedupe_window_ms=3_600_000, max_record_bytes=10_000)


def src(value: dict | bytes, offset: int = 0, ts: int = 1_000, key: bytes | None = None) -> Source:
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return Source("raw", 0, offset, ts, key, raw)


def ev(**fields) -> merge.Event:
    parsed = merge.classify(
        src(fields, offset=fields.pop("_offset", 0) if "_offset" in fields else 0)
    )
    assert isinstance(parsed, merge.Event), parsed
    return parsed


def test_coalesce_keeps_base_for_null_and_absent_fields_and_replaces_nested_whole():
    base = {"a": 1, "b": {"x": 1, "y": 2}, "c": [1, 2], "d": "keep"}
    update = {"a": None, "b": {"x": 9}, "c": [3], "e": "new"}
    assert merge.coalesce(base, update) == {
        "a": 1,
        "b": {"x": 9},
        "c": [3],
        "d": "keep",
        "e": "new",
    }


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", merge.INVALID_JSON),
        (b"\xff\xfe", merge.INVALID_JSON),
        (b"[1,2]", merge.NOT_AN_OBJECT),
        (b'"text"', merge.NOT_AN_OBJECT),
        (b'{"status":"RUNNING"}', merge.MISSING_EXECUTION_ID),
        (b'{"execution_id":"","status":"RUNNING"}', merge.MISSING_EXECUTION_ID),
        (b'{"execution_id":7,"status":"RUNNING"}', merge.MISSING_EXECUTION_ID),
        (b'{"execution_id":"e","status":"DONE"}', merge.INVALID_STATUS),
        (b'{"execution_id":"e"}', merge.INVALID_STATUS),
        (
            b'{"execution_id":"e","status":"RUNNING","protocol_version":3}',
            merge.UNSUPPORTED_PROTOCOL_VERSION,
        ),
        (
            b'{"execution_id":"e","status":"RUNNING","protocol_version":"2"}',
            merge.UNSUPPORTED_PROTOCOL_VERSION,
        ),
        (
            b'{"execution_id":"e","status":"RUNNING","protocol_version":true}',
            merge.UNSUPPORTED_PROTOCOL_VERSION,
        ),
    ],
)
def test_classify_rejects_with_the_contract_reason(raw, reason):
    result = merge.classify(src(raw))
    assert isinstance(result, merge.Rejected)
    assert result.reason == reason
    assert result.detail


def test_running_is_held_then_terminal_emits_the_merge_and_leaves_a_marker():
    running = ev(execution_id="e1", status="RUNNING", route_id="r", start_time="t0")
    d1 = merge.decide(running, None, RULES, now_ms=5_000)
    assert d1.outputs == [] and d1.dead == []
    held = decode_state(d1.writes[state_key("e1")])
    assert isinstance(held, Held) and held.due_ms == 1_000 + 300_000
    assert d1.writes[index_key(held.due_ms, "e1")] == b""

    done = ev(execution_id="e1", status="COMPLETED", duration_ms=3, route_id=None)
    d2 = merge.decide(done, d1.writes[state_key("e1")], RULES, now_ms=6_000)
    assert [o.origin for o in d2.outputs] == [merge.MERGED]
    assert orjson.loads(d2.outputs[0].value) == {
        "execution_id": "e1",
        "status": "COMPLETED",
        "route_id": "r",
        "start_time": "t0",
        "duration_ms": 3,
    }
    assert d2.outputs[0].key == b"e1"
    assert isinstance(decode_state(d2.writes[state_key("e1")]), Marker)
    assert d2.writes[index_key(held.due_ms, "e1")] is None  # stale entry gone with the merge


def test_state_codec_round_trips():
    held = Held(1, 2, True, (Source("t", 3, 4, 5, None, b"v"), Source("u", 0, 9, 7, b"k", b"")))
    assert decode_state(encode_state(held)) == held
    assert decode_state(encode_state(Marker(123))) == Marker(123)


def test_a_running_events_null_fields_are_its_fields_in_the_merge():
    running = ev(execution_id="e2", status="RUNNING", a=None, b=1)
    d1 = merge.decide(running, None, RULES, now_ms=1)
    done = ev(execution_id="e2", status="COMPLETED", c=None)
    d2 = merge.decide(done, d1.writes[state_key("e2")], RULES, now_ms=2)
    assert orjson.loads(d2.outputs[0].value) == {
        "execution_id": "e2",
        "status": "COMPLETED",
        "a": None,  # the RUNNING event's own null: "start from the RUNNING event's fields"
        "b": 1,
        "c": None,  # the terminal event's null that no RUNNING has: "present in either event"
    }
