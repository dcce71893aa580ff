"""The pure merge rules, no Kafka."""

from __future__ import annotations

import orjson
import pytest

from app.core import merge
from app.core.heldstate import (
    Held,
    Marker,
    Source,
    decode_state,
    encode_state,
    index_key,
    index_upper_bound,
    parse_index_key,
    state_key,
)

from .onepartition import released

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


# -- a terminal's null field, late RUNNINGs, bounded state ----------------------

DAY = 86_400_000
RETAINING = merge.Rules(
    stale_after_ms=300_000,
    dedupe_window_ms=3_600_000,
    max_record_bytes=10_000,
    held_retention_ms=3 * DAY,
)


class Store:
    """A dict as the state store, and a sweep over the due index keys (the shell's job)."""

    def __init__(self, rules: merge.Rules = RETAINING) -> None:
        self.rules = rules
        self.data: dict[bytes, bytes] = {}
        self.outputs: list[merge.Output] = []
        self.dead: list[merge.DeadLetter] = []
        self.counters: list[str] = []
        self.notes: list[str] = []

    def apply(self, decision: merge.Decision) -> merge.Decision:
        for key, value in decision.writes.items():
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
        self.outputs += decision.outputs
        self.dead += decision.dead
        self.counters.append(decision.counter)
        if decision.note:
            self.notes.append(decision.note)
        return decision

    def read(self, fields: dict, ts: int, now: int) -> merge.Decision:
        parsed = merge.classify(src(fields, ts=ts, key=fields["execution_id"].encode()))
        assert isinstance(parsed, merge.Event)
        stored = self.data.get(state_key(parsed.execution_id))
        decision = self.apply(merge.decide(parsed, stored, self.rules, now))
        release = released(decision, parsed.execution_id, self.data.get, self.rules, now)
        return decision if release is None else self.apply(release)

    def sweep(self, now: int) -> list[str]:
        due = sorted(k for k in self.data if k[:1] == b"i" and k < index_upper_bound(now))
        counters = []
        for key in due:
            due_ms, eid = parse_index_key(key)
            stored = self.data.get(state_key(eid))
            counters.append(
                self.apply(merge.sweep_entry(eid, due_ms, stored, self.rules, now)).counter
            )
        return counters

    def statuses(self, eid: str) -> list[str]:
        return [orjson.loads(o.value)["status"] for o in self.outputs if o.key == eid.encode()]


def test_a_null_field_of_the_terminal_event_survives_the_merge():
    """A FAILED event sends "output_body": null, its RUNNING has none."""
    store = Store()
    store.read({"execution_id": "f", "status": "RUNNING", "route_id": "r"}, 1_000, 1_000)
    store.read(
        {"execution_id": "f", "status": "FAILED", "output_body": None, "error": {"t": "x"}},
        2_000,
        2_000,
    )
    [out] = store.outputs
    assert out.origin == merge.MERGED
    assert orjson.loads(out.value) == {
        "execution_id": "f",
        "status": "FAILED",
        "route_id": "r",
        "output_body": None,  # present in the terminal event: present in the merge
        "error": {"t": "x"},
    }


def test_a_null_terminal_field_does_not_replace_a_running_value():
    store = Store()
    store.read({"execution_id": "g", "status": "RUNNING", "output_body": "kept"}, 1_000, 1_000)
    store.read({"execution_id": "g", "status": "COMPLETED", "output_body": None}, 2_000, 2_000)
    assert orjson.loads(store.outputs[0].value)["output_body"] == "kept"


def test_a_running_replayed_after_the_dedupe_window_meets_the_marker_and_is_dropped():
    """Past the dedupe window, with a new Kafka timestamp (an agent
    replaying its buffer after an outage): no state is held again, nothing is flushed."""
    store = Store()
    running = {"execution_id": "late", "status": "RUNNING", "route_id": "r"}
    store.read(running, 1_000, 1_000)
    store.read({"execution_id": "late", "status": "COMPLETED"}, 2_000, 2_000)
    replay_at = 2_000 + RETAINING.dedupe_window_ms + 60_000
    store.sweep(replay_at)  # past the dedupe window: the marker is still there
    decision = store.read(running, replay_at, replay_at)
    assert decision.counter == "running_after_terminal" and decision.writes == {}
    assert store.sweep(replay_at + RETAINING.stale_after_ms + 1) == []
    assert store.statuses("late") == ["COMPLETED"]


def test_a_running_replayed_after_the_marker_with_its_own_timestamp_is_never_held():
    """After the marker expired (held retention): its Kafka timestamp is older than the held
    retention, so it is dropped, never held, never flushed."""
    store = Store()
    running = {"execution_id": "later", "status": "RUNNING", "route_id": "r"}
    store.read(running, 1_000, 1_000)
    store.read({"execution_id": "later", "status": "COMPLETED"}, 2_000, 2_000)
    gone = 2_000 + RETAINING.marker_ms
    assert store.sweep(gone) == ["marker_expired"]
    assert store.data == {}
    decision = store.read(running, 1_000, gone + 1)
    assert decision.counter == "running_too_old" and decision.writes == {}
    assert store.sweep(gone + 10 * DAY) == []
    assert store.statuses("later") == ["COMPLETED"]


def test_documented_limit_a_running_resent_with_a_new_timestamp_after_the_marker():
    """docs/design.md, "Choices": once the marker is gone, a RUNNING re-sent with a new timestamp
    cannot be told from a new execution's RUNNING: it is held and flushed. This test pins
    the limit down, so a change to it is seen."""
    store = Store()
    running = {"execution_id": "lost", "status": "RUNNING"}
    store.read(running, 1_000, 1_000)
    store.read({"execution_id": "lost", "status": "COMPLETED"}, 2_000, 2_000)
    gone = 2_000 + RETAINING.marker_ms
    store.sweep(gone)
    assert store.read(running, gone, gone).counter == "running_held"


def test_a_held_running_is_flushed_then_leaves_the_state_after_its_retention():
    """Flushed at first_ts + stale_after, indexed again for first_ts +
    held_retention, then gone: counted, with a note for the log."""
    store = Store()
    store.read({"execution_id": "stuck", "status": "RUNNING"}, 1_000, 1_000)
    store.read({"execution_id": "stuck", "status": "RUNNING", "retry": 1}, 5_000, 5_000)
    flush_at = 1_000 + RETAINING.stale_after_ms
    assert store.sweep(flush_at) == ["stale_flushed"]
    held = decode_state(store.data[state_key("stuck")])
    assert isinstance(held, Held) and held.stale_emitted
    assert held.due_ms == 1_000 + RETAINING.held_retention_ms
    assert sorted(k for k in store.data if k[:1] == b"i") == [index_key(held.due_ms, "stuck")]
    assert store.sweep(held.due_ms - 1) == []  # not yet
    assert store.sweep(held.due_ms) == ["held_expired"]
    assert store.data == {}
    assert store.statuses("stuck") == ["RUNNING"]
    assert "stuck" in store.notes[0] and "expired" in store.notes[0]
    # its terminal after that: terminal-only, the last record of the execution
    store.read({"execution_id": "stuck", "status": "COMPLETED"}, held.due_ms + 1, held.due_ms + 1)
    assert store.statuses("stuck") == ["RUNNING", "COMPLETED"]
    assert store.outputs[-1].origin == merge.TERMINAL_ONLY


def test_a_stale_running_too_large_for_the_output_is_not_flushed_and_its_merge_dead_letters():
    """A held RUNNING whose stale record would exceed max_record_bytes: the flush emits
    nothing (counted `stale_too_large`) but the RUNNING stays held, indexed for its
    retention like a flushed one; its terminal's merge, too large as well, goes to the
    DLQ as the two original events."""
    rules = merge.Rules(
        stale_after_ms=RETAINING.stale_after_ms,
        held_retention_ms=RETAINING.held_retention_ms,
        max_record_bytes=10_000,
    )
    store = Store(rules)
    big = {"execution_id": "big", "status": "RUNNING", "input_body": "i" * 10_000}
    small = {"execution_id": "small", "status": "RUNNING", "input_body": "i" * 100}
    store.read(big, 1_000, 1_000)
    store.read(small, 1_000, 1_000)
    assert sorted(store.sweep(1_000 + rules.stale_after_ms)) == ["stale_flushed", "stale_too_large"]
    assert (store.statuses("big"), store.statuses("small")) == ([], ["RUNNING"])
    assert store.dead == []  # the RUNNING itself is not dead: its terminal may still come
    held = decode_state(store.data[state_key("big")])
    assert isinstance(held, Held) and held.stale_emitted
    assert held.due_ms == 1_000 + rules.held_retention_ms
    assert sorted(k for k in store.data if k.endswith(b"big") and k[:1] == b"i") == [
        index_key(held.due_ms, "big")
    ]
    now = 2 * rules.stale_after_ms
    done = store.read({"execution_id": "big", "status": "COMPLETED"}, now, now)
    assert (done.counter, done.outputs) == ("too_large", [])
    assert [(d.reason, orjson.loads(d.source.value)["status"]) for d in store.dead] == [
        (merge.TOO_LARGE, "RUNNING"),
        (merge.TOO_LARGE, "COMPLETED"),
    ]
    assert isinstance(decode_state(store.data[state_key("big")]), Marker)


def test_a_terminal_for_a_flushed_running_removes_its_retention_entry():
    store = Store()
    store.read({"execution_id": "s2", "status": "RUNNING"}, 1_000, 1_000)
    store.sweep(1_000 + RETAINING.stale_after_ms)
    now = 2 * RETAINING.stale_after_ms
    store.read({"execution_id": "s2", "status": "FAILED"}, now, now)
    marker = decode_state(store.data[state_key("s2")])
    assert isinstance(marker, Marker) and marker.expires_ms == now + RETAINING.marker_ms
    assert sorted(k for k in store.data if k[:1] == b"i") == [index_key(marker.expires_ms, "s2")]
    assert store.statuses("s2") == ["RUNNING", "FAILED"]


def test_a_running_first_read_older_than_the_retention_is_not_held():
    """The cost: a backlog older than the held retention loses its RUNNINGs' fields."""
    store = Store()
    now = 10 * DAY
    old = now - RETAINING.held_retention_ms
    assert store.read({"execution_id": "o", "status": "RUNNING"}, old, now).counter == (
        "running_too_old"
    )
    assert store.read({"execution_id": "o2", "status": "RUNNING"}, old + 1, now).counter == (
        "running_held"
    )
    assert store.sweep(now) == ["stale_flushed"]  # late, but within the retention: flushed


def test_markers_live_for_the_longer_of_the_dedupe_window_and_the_held_retention():
    assert RETAINING.marker_ms == 3 * DAY
    longer_window = merge.Rules(dedupe_window_ms=5 * DAY, held_retention_ms=3 * DAY)
    assert longer_window.marker_ms == 5 * DAY


def test_the_retention_report_sums_what_left_the_state_once_a_minute():
    report = merge.RetentionReport(every_ms=60_000)
    assert report.report(0) == ""
    for counter in ["marker_expired"] * 3 + ["held_expired", "stale_flushed"]:
        report.add(counter)
    assert report.report(59_999) == ""
    line = report.report(60_000)
    assert "3 dedupe markers expired" in line and "1 held RUNNINGs expired" in line
    assert report.report(200_000) == ""  # nothing new
