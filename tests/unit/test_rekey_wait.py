"""Re-keyed pairs: a terminal that came through the re-key topic and found nothing held
waits for its RUNNING (app.merge `Pending`), and the re-key progress that lets it go
(app.rekeybarrier). Pure: no Kafka."""

from __future__ import annotations

import orjson
from aiokafka import TopicPartition

from app import merge
from app.heldstate import Pending, Source, decode_state, encode_state, state_key
from app.rekeybarrier import RekeyBarrier

RULES = merge.Rules(stale_after_ms=300_000, rekey_grace_ms=60_000, max_record_bytes=10_000)
TRACE = ("traceparent", b"00-abc-01")


def event(fields: dict, *, topic: str = "raw", headers=()) -> merge.Event:
    parsed = merge.classify(Source(topic, 2, 7, 1_000, None, orjson.dumps(fields), headers))
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


def test_a_rekeyed_terminal_that_finds_nothing_waits_and_its_running_merges_into_it():
    st = State()
    waiting = st.decide(event(DONE, topic="rekey", headers=(TRACE,)), now=5_000, rekeyed=True)
    assert (waiting.counter, waiting.outputs) == ("terminal_waiting", [])
    assert isinstance(decode_state(st.kv[state_key("e1")]), Pending)
    assert st.index() == [5_000]  # due at once: every sweep asks whether it may go
    # the sweep keeps it while the re-key topic is not known complete past 5,000
    assert [d.counter for d in st.sweep(now=6_000, safe_ms=4_999)] == ["terminal_still_waiting"]
    merged = st.decide(event(RUNNING, topic="rekey"), now=7_000, rekeyed=True)
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
    assert st.index() == [7_000 + RULES.marker_ms]
    assert st.decide(event(RUNNING), now=8_000, rekeyed=False).counter == "running_after_terminal"


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


def test_only_rekeyed_terminals_wait_and_a_duplicate_of_a_waiting_one_is_dropped():
    direct = State()
    assert direct.decide(event(DONE), now=5_000, rekeyed=False).counter == "terminal_only"
    st = State()
    st.decide(event(DONE, topic="rekey"), now=5_000, rekeyed=True)
    assert st.decide(event(DONE, topic="rekey"), now=5_100, rekeyed=True).counter == (
        "duplicate_terminal"
    )
    no_wait = merge.Rules(rekey_grace_ms=0)
    assert merge.decide(event(DONE, topic="rekey"), None, no_wait, 5_000, True).counter == (
        "terminal_only"
    )


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


def test_a_waiting_terminal_whose_merge_is_too_large_dead_letters_both_events():
    st = State()
    half = RULES.max_record_bytes // 2 + 100
    terminal = {**DONE, "output_body": "o" * half}
    running = {**RUNNING, "input_body": "i" * half}
    st.decide(event(terminal, topic="rekey"), now=5_000, rekeyed=True)
    merged = st.decide(event(running, topic="rekey"), now=7_000, rekeyed=True)
    assert (merged.counter, merged.outputs) == ("too_large", [])
    assert [(d.reason, d.source.value) for d in merged.dead] == [
        (merge.TOO_LARGE, orjson.dumps(running)),
        (merge.TOO_LARGE, orjson.dumps(terminal)),
    ]
    assert st.index() == [7_000 + RULES.marker_ms]  # a marker: the pair is done


def test_a_pending_terminal_keeps_its_bytes_and_headers_through_the_store():
    terminal = Source("raw", 4, 99, 1_234, b"wrong-key", b'{"x":1}', (("a", b"1"), ("b", None)))
    pending = Pending(5_000, 65_000, terminal)
    assert decode_state(encode_state(pending)) == pending


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
