"""Mixed keying: a terminal waits for the RUNNING events that may still be on their way
through the re-key topic (app.core.merge `Pending`), and the re-key progress that lets it go
(app.core.rekeybarrier). Pure: no Kafka."""

from __future__ import annotations

import struct

import orjson
from aiokafka import TopicPartition

from app.core import merge
from app.core.heldstate import Pending, Source, decode_state, encode_state, state_key
from app.core.rekeybarrier import RekeyBarrier

RULES = merge.Rules(stale_after_ms=300_000, rekey_grace_ms=60_000, max_record_bytes=10_000)
TRACE = ("traceparent", b"00-abc-01")


def event(fields: dict, *, topic: str = "raw", headers=(), ts: int = 1_000) -> merge.Event:
    key = fields["execution_id"].encode() if topic == "raw" else None  # as the shell reads it
    parsed = merge.classify(Source(topic, 2, 7, ts, key, orjson.dumps(fields), headers))
    assert isinstance(parsed, merge.Event)
    return parsed


class State:
    """One execution's state, as the shell keeps it: decisions' writes applied."""

    def __init__(self) -> None:
        self.kv: dict[bytes, bytes] = {}

    def apply(self, decision: merge.Decision) -> merge.Decision:
        for key, value in decision.writes.items():
            if value is None:
                self.kv.pop(key, None)
            else:
                self.kv[key] = value
        return decision

    def decide(self, ev: merge.Event, now: int, rekeyed: bool) -> merge.Decision:
        return self.apply(merge.decide(ev, self.kv.get(state_key("e1")), RULES, now, rekeyed))

    def sweep(self, now: int, safe_ms: int) -> list[merge.Decision]:
        out = []
        for key in sorted(k for k in self.kv if k[:1] == b"i"):
            due = int.from_bytes(key[1:9], "big")
            out.append(
                self.apply(
                    merge.sweep_entry("e1", due, self.kv.get(state_key("e1")), RULES, now, safe_ms)
                )
            )
        return out

    def index(self) -> list[int]:
        return [int.from_bytes(k[1:9], "big") for k in self.kv if k[:1] == b"i"]


RUNNING = {"execution_id": "e1", "status": "RUNNING", "route_id": "orders", "input_body": "in"}
DONE = {"execution_id": "e1", "status": "FAILED", "output_body": None, "route_id": None}


def test_a_rekeyed_terminal_that_finds_nothing_waits_and_its_running_joins_it():
    st = State()
    waiting = st.decide(event(DONE, topic="rekey", headers=(TRACE,)), now=5_000, rekeyed=True)
    assert (waiting.counter, waiting.outputs) == ("terminal_waiting", [])
    assert isinstance(decode_state(st.kv[state_key("e1")]), Pending)
    assert st.index() == [5_000]  # due at once: every sweep asks whether it may go
    # the sweep keeps it while the re-key topic is not known complete past 5,000
    assert [d.counter for d in st.sweep(now=6_000, safe_ms=4_999)] == ["terminal_still_waiting"]
    joined = st.decide(event(RUNNING, topic="rekey"), now=7_000, rekeyed=True)
    assert (joined.counter, joined.outputs) == ("running_joined", [])  # more may come
    [merged] = st.sweep(now=8_000, safe_ms=5_000)
    assert merged.counter == "merged"
    [out] = merged.outputs
    assert out.origin == merge.MERGED and out.headers == (TRACE,)  # the terminal's headers
    # the RUNNING's fields, the terminal's over them, its null field kept
    assert orjson.loads(out.value) == {
        "execution_id": "e1",
        "status": "FAILED",
        "route_id": "orders",
        "input_body": "in",
        "output_body": None,
    }
    # a marker now, with its one index entry: a late RUNNING is dropped
    assert st.index() == [8_000 + RULES.marker_ms]
    assert st.decide(event(RUNNING), now=9_000, rekeyed=False).counter == "running_after_terminal"


def test_a_keyed_terminal_that_finds_nothing_waits_for_an_unkeyed_running():
    """The RUNNING sent without a key, the terminal keyed: the terminal is read first."""
    st = State()
    assert st.decide(event(DONE), now=5_000, rekeyed=False).counter == "terminal_waiting"
    assert st.decide(event(RUNNING, topic="rekey"), now=5_200, rekeyed=True).counter == (
        "running_joined"
    )
    [merged] = st.sweep(now=6_000, safe_ms=5_000)
    [out] = merged.outputs
    assert (out.origin, orjson.loads(out.value)["input_body"]) == (merge.MERGED, "in")


def test_a_keyed_running_read_after_its_keyed_terminal_is_late_and_the_terminal_stands():
    """One partition keeps the agent's order: that RUNNING was sent after the terminal."""
    st = State()
    st.decide(event(DONE), now=5_000, rekeyed=False)
    late = st.decide(event(RUNNING), now=5_100, rekeyed=False)
    assert (late.counter, late.writes, late.outputs) == ("running_after_terminal", {}, [])
    [alone] = st.sweep(now=6_000, safe_ms=5_000)
    [out] = alone.outputs
    assert (out.origin, orjson.loads(out.value)) == (merge.TERMINAL_ONLY, DONE)


def test_a_keyed_pair_merges_at_once():
    st = State()
    assert st.decide(event(RUNNING), now=5_000, rekeyed=False).counter == "running_held"
    merged = st.decide(event(DONE), now=5_100, rekeyed=False)
    assert merged.counter == "merged" and [o.origin for o in merged.outputs] == [merge.MERGED]


def test_a_keyed_terminal_waits_when_a_running_held_came_through_the_rekey_topic():
    """Unkeyed RUNNING events travel apart: a later one may still be on its way."""
    first = {**RUNNING, "retry": None, "headers": {"a": "1"}}
    second = {"execution_id": "e1", "status": "RUNNING", "retry": 1, "headers": {"b": "2"}}
    st = State()
    # the later RUNNING (by Kafka timestamp) arrives first
    st.decide(event(second, topic="rekey", ts=1_500), now=5_000, rekeyed=True)
    assert st.decide(event(DONE), now=5_100, rekeyed=False).counter == "terminal_waiting"
    assert st.index() == [5_100]  # the held RUNNING's stale entry gave way to the wait's
    st.decide(event(first, topic="rekey", ts=1_000), now=5_200, rekeyed=True)
    [merged] = st.sweep(now=6_000, safe_ms=5_100)
    # earlier under later by Kafka timestamp, the terminal over both
    assert orjson.loads(merged.outputs[0].value) == {
        "execution_id": "e1",
        "status": "FAILED",
        "route_id": "orders",
        "input_body": "in",
        "retry": 1,
        "headers": {"b": "2"},
        "output_body": None,
    }


def test_a_rekeyed_terminal_waits_even_with_a_keyed_running_held_and_takes_later_ones():
    """Keyed RUNNING events still unread on the execution's partition join the wait."""
    again = {"execution_id": "e1", "status": "RUNNING", "retry": 2}
    st = State()
    st.decide(event(RUNNING), now=5_000, rekeyed=False)
    assert st.decide(event(DONE, topic="rekey"), now=5_100, rekeyed=True).counter == (
        "terminal_waiting"
    )
    # read after the terminal, but on another path: not known to be sent after it
    assert st.decide(event(again, ts=1_200), now=5_200, rekeyed=False).counter == ("running_joined")
    [merged] = st.sweep(now=6_000, safe_ms=5_100)
    body = orjson.loads(merged.outputs[0].value)
    assert (body["input_body"], body["retry"], body["status"]) == ("in", 2, "FAILED")


def test_a_released_merge_too_large_for_the_output_goes_to_the_dlq_as_its_events():
    big = {**RUNNING, "input_body": "x" * 20_000}
    st = State()
    st.decide(event(DONE, headers=(TRACE,)), now=5_000, rekeyed=False)
    st.decide(event(big, topic="rekey"), now=5_100, rekeyed=True)
    [released] = st.sweep(now=6_000, safe_ms=5_000)
    assert released.outputs == [] and released.counter == "too_large"
    assert [(d.reason, d.source.topic) for d in released.dead] == [
        (merge.TOO_LARGE, "rekey"),
        (merge.TOO_LARGE, "raw"),
    ]
    assert released.dead[1].source.headers == (TRACE,)
    assert isinstance(decode_state(st.kv[state_key("e1")]), merge.Marker)


def test_a_waiting_terminal_goes_out_alone_once_the_rekey_topic_is_complete_past_it():
    st = State()
    st.decide(event(DONE, topic="rekey"), now=5_000, rekeyed=True)
    [released] = st.sweep(now=6_500, safe_ms=5_000)
    assert released.counter == "terminal_only"
    [out] = released.outputs
    assert (out.origin, orjson.loads(out.value)) == (merge.TERMINAL_ONLY, DONE)
    assert released.note == ""  # the normal way out, not the grace
    assert st.index() == [6_500 + RULES.marker_ms]


def test_the_grace_bounds_the_wait_when_the_progress_is_never_known():
    st = State()
    st.decide(event(DONE, topic="rekey"), now=5_000, rekeyed=True)
    assert [d.counter for d in st.sweep(now=64_999, safe_ms=-1)] == ["terminal_still_waiting"]
    [late] = st.sweep(now=65_000, safe_ms=-1)
    assert late.counter == "terminal_only" and "waited 60 s" in late.note


def test_a_duplicate_of_a_waiting_terminal_is_dropped_and_no_grace_means_no_wait():
    st = State()
    st.decide(event(DONE, topic="rekey"), now=5_000, rekeyed=True)
    assert st.decide(event(DONE), now=5_100, rekeyed=False).counter == "duplicate_terminal"
    no_wait = merge.Rules(rekey_grace_ms=0)
    for rekeyed, topic in ((True, "rekey"), (False, "raw")):
        ev = event(DONE, topic=topic)
        assert merge.decide(ev, None, no_wait, 5_000, rekeyed).counter == "terminal_only"


def test_a_waiting_terminal_too_large_for_the_output_is_dead_lettered_when_let_go():
    st = State()
    big = {**DONE, "output_body": "o" * RULES.max_record_bytes}
    waiting = st.decide(event(big, topic="rekey", headers=(TRACE,)), now=5_000, rekeyed=True)
    assert waiting.counter == "terminal_waiting"
    [released] = st.sweep(now=6_500, safe_ms=5_000)
    assert (released.counter, released.outputs) == ("too_large", [])
    [dead] = released.dead
    assert dead.reason == merge.TOO_LARGE
    assert (dead.source.value, dead.source.headers) == (orjson.dumps(big), (TRACE,))
    # it went: a marker, and a late RUNNING is dropped
    assert st.index() == [6_500 + RULES.marker_ms]
    assert st.decide(event(RUNNING), now=7_000, rekeyed=False).counter == "running_after_terminal"


def test_a_pending_terminal_keeps_its_bytes_headers_and_runnings_through_the_store():
    terminal = Source("raw", 4, 99, 1_234, b"wrong-key", b'{"x":1}', (("a", b"1"), ("b", None)))
    running = Source("raw", 1, 5, 1_000, None, b'{"y":2}')
    for pending in (
        Pending(5_000, 65_000, terminal),
        Pending(5_000, 65_000, terminal, True, (running, running)),
    ):
        assert decode_state(encode_state(pending)) == pending


def test_a_pending_terminal_in_the_earlier_layout_is_still_read():
    """A changelog written before the wait took RUNNING events along: `P` records."""
    terminal = Source("raw", 4, 99, 1_234, None, b'{"x":1}')
    old = (
        b"P"
        + struct.pack(">qqH", 5_000, 65_000, 1)
        + struct.pack(">Hi", 1, 1)
        + b"a1"
        + struct.pack(">iqqiiH", 4, 99, 1_234, -1, 7, 3)
        + b"raw"
        + b'{"x":1}'
    )
    terminal.headers = (("a", b"1"),)
    assert decode_state(old) == Pending(5_000, 65_000, terminal)


def tp(p: int) -> TopicPartition:
    return TopicPartition("rekey", p)


def test_the_barrier_passes_a_snapshot_once_raw_is_committed_past_it_and_rekey_read_past_that():
    barrier = RekeyBarrier()
    # t=1,000: raw partitions end at 10 and 20; the group committed 8 and 20
    assert barrier.observe(1_000, {0: 10, 1: 20}, {0: 8, 1: 20}, {tp(0): 5}, {tp(0): 5}) == -1
    # t=2,000: raw 0 committed past 10 (the 1,000 snapshot passes its raw part); the
    # re-key partition ends at 9 now, and this worker has read it to 7 only
    assert barrier.observe(2_000, {0: 12, 1: 20}, {0: 10, 1: 20}, {tp(0): 9}, {tp(0): 7}) == -1
    # read to 9 (past its transaction markers): complete up to 1,000; the 2,000
    # snapshot (raw 0 at 12) is not passed yet
    assert barrier.observe(3_000, {0: 12, 1: 21}, {0: 11, 1: 21}, {tp(0): 9}, {tp(0): 9}) == 1_000
    assert barrier.observe(4_000, {0: 12, 1: 21}, {0: 12, 1: 21}, {tp(0): 9}, {tp(0): 9}) == 4_000
    barrier.reset()
    assert barrier.safe_ms == -1


def test_an_unowned_raw_partition_holds_the_barrier_back():
    barrier = RekeyBarrier()
    for t in range(1_000, 10_000, 1_000):  # nobody commits raw 1: no progress known
        assert barrier.observe(t, {0: 5, 1: 5}, {0: 5, 1: None}, {}, {}) == -1
