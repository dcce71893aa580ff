"""State stays bounded, and no RUNNING ever follows a terminal record.

A merged execution leaves the held state, markers expire after the held retention
(longer than the dedupe window here, as by default), held RUNNINGs whose terminal
never comes are flushed and then leave the state, and a RUNNING replayed after the
dedupe window (new timestamp) or after the marker (its original timestamp) is dropped.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from app.core.heldstate import Held, Marker, decode_state

from .harness import changelog, consume_until, event, for_key, partition_of, produce, settled

WINDOW = 2  # dedupe window, s
STALE = 2  # stale_after, s
RETENTION = 8  # held retention, s: markers live this long too (longer than the window)


@pytest.fixture(scope="module")
def worker_env():
    return {
        "CAMELEER_DEDUPE_WINDOW": str(WINDOW),
        "CAMELEER_STALE_AFTER": str(STALE),
        "CAMELEER_HELD_RETENTION": str(RETENTION),
        # one sweep a second: the steady stream below is paced by the sweep rounds
        "CAMELEER_SWEEP_INTERVAL": "1.0",
    }


def latest(records, key: bytes):
    values = [r.value for r in records if r.key == key]
    return values[-1] if values else "absent"


def wait_for(what: str, condition, timeout: float = 60.0, every: float = 0.2, worker=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)  # poll with a deadline
    counts = worker.counts() if worker is not None else "-"
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; counts {counts}")


def delta(worker, before: dict[str, int], name: str) -> int:
    """How far a counter moved since `before` (worker.counts() raises when /stats
    cannot be read, so neither side is ever a silent 0)."""
    return worker.counts().get(name, 0) - before.get(name, 0)


def test_merged_execution_leaves_held_state_and_its_marker_expires(bootstrap, topics, worker):
    eid = f"exec-{uuid.uuid4()}"
    skey = b"e" + eid.encode()
    produce(
        bootstrap,
        topics.raw,
        [
            (eid.encode(), event(eid, "RUNNING", route_id="r")),
            (eid.encode(), event(eid, "COMPLETED", duration_ms=1)),
        ],
    )
    # (held, when the two events fall in different transactions), a marker, then,
    # after the held retention, nothing at all
    states = consume_until(
        bootstrap, changelog(topics), lambda rs: latest(rs, skey) is None, timeout=60
    )
    history = [r.value for r in states if r.key == skey]
    assert history[-1] is None, "the marker never expired"
    kinds = [type(decode_state(v)) for v in history[:-1]]
    assert kinds in ([Held, Marker], [Marker])
    # its time-index entries stay local (a restore derives them from the states)
    assert not [r for r in states if r.key.startswith(b"i") and r.key.endswith(eid.encode())]
    # once forgotten, the same terminal event is new again: emitted as terminal-only
    produce(bootstrap, topics.raw, [(eid.encode(), event(eid, "COMPLETED", duration_ms=1))])
    outs = consume_until(bootstrap, topics.output, lambda rs: len(for_key(rs, eid)) >= 2)
    assert [o.origin for o in for_key(outs, eid)] == ["merged", "terminal-only"]


def test_a_running_replayed_after_the_dedupe_window_never_follows_the_terminal(
    bootstrap, topics, worker
):
    """An agent replays its buffer after an outage. `fresh` is replayed
    after the dedupe window with a new Kafka timestamp (the marker is still there);
    `original` after its marker expired, with its original timestamp. Neither is held
    again, so no stale flush can put a RUNNING after the terminal record."""
    fresh, original = f"fresh-{uuid.uuid4()}", f"original-{uuid.uuid4()}"
    before = worker.counts()
    t0 = int(time.time() * 1000)
    runnings = {eid: event(eid, "RUNNING", route_id="r", agent_id="a") for eid in (fresh, original)}
    for eid in (fresh, original):
        produce(
            bootstrap,
            topics.raw,
            [
                (eid.encode(), runnings[eid]),
                (eid.encode(), event(eid, "FAILED", output_body=None, error="boom")),
            ],
            timestamp_ms=t0,
        )
    for eid in (fresh, original):
        [merged] = for_key(
            consume_until(bootstrap, topics.output, lambda rs, e=eid: bool(for_key(rs, e))), eid
        )
        assert merged.origin == "merged"
        # item 1 on the way: the terminal's null field that the RUNNING lacks is kept
        assert merged.json["output_body"] is None and merged.json["route_id"] == "r"
    handled = time.monotonic()

    # past the dedupe window, well within the marker's life: a new timestamp
    wait_for("the dedupe window to pass", lambda: time.monotonic() > handled + WINDOW + 0.5)
    produce(bootstrap, topics.raw, [(fresh.encode(), runnings[fresh])])
    wait_for(
        "the fresh replay to be dropped",
        lambda: delta(worker, before, "running_after_terminal") >= 1,
        worker=worker,
    )

    # past the marker's life (the held retention): its original timestamp
    skey = b"e" + original.encode()
    states = consume_until(bootstrap, changelog(topics), lambda rs: latest(rs, skey) is None, 60)
    assert latest(states, skey) is None, f"the marker did not expire: {worker.counts()}"
    produce(bootstrap, topics.raw, [(original.encode(), runnings[original])], timestamp_ms=t0)
    wait_for(
        "the old replay to be dropped",
        lambda: delta(worker, before, "running_too_old") >= 1,
        worker=worker,
    )

    # no stale flush comes: let stale_after pass, and two sweeps after it
    rounds = worker.counts().get("sweep_rounds", 0)
    wait_for(
        "stale_after and two sweeps",
        lambda: worker.counts().get("sweep_rounds", 0) >= rounds + STALE + 2,
        worker=worker,
    )
    parts = sorted({partition_of(fresh), partition_of(original)})
    outputs = settled(bootstrap, topics, parts)
    for eid in (fresh, original):
        outs = for_key(outputs, eid)
        assert [o.origin for o in outs] == ["merged"], (eid, [o.json for o in outs])
    assert delta(worker, before, "running_after_terminal") == 1
    assert delta(worker, before, "running_too_old") == 1
    # and nothing was held for them again
    states = settled(bootstrap, topics, parts, changelog(topics))
    for eid in (fresh, original):
        history = [r.value for r in states if r.key == b"e" + eid.encode()]
        kinds = [type(decode_state(v)) if v is not None else None for v in history]
        assert Marker in kinds, (eid, kinds)  # the history was read: its marker is there
        after_marker = kinds[kinds.index(Marker) :]
        assert Held not in after_marker, (eid, kinds)


RATE = 25  # never-ending executions started per second
STREAM_SECONDS = 20  # 2.5 held retentions


def test_state_stays_bounded_under_executions_that_never_end(bootstrap, topics, worker):
    """A steady stream of RUNNINGs whose terminal never comes. Each is
    flushed at stale_after and leaves the state at the held retention: the held count
    levels off at about RATE x RETENTION instead of growing with the stream, and the
    sweeps read what is due (two index entries per execution), not what is held."""
    run = uuid.uuid4().hex[:8]
    prefix = f"steady-{run}-"
    before = worker.counts()
    started = time.time()
    total = asyncio.run(_steady_stream(bootstrap, topics.raw, prefix, worker))
    ended = time.time()
    wait_for(
        "every held RUNNING to expire",
        lambda: delta(worker, before, "held_expired") >= total,
        timeout=RETENTION + 60,
        worker=worker,
    )
    mine = prefix.encode()
    records = consume_until(
        bootstrap,
        changelog(topics),
        lambda rs: (
            sum(1 for r in rs if r.key[:1] == b"e" and mine in r.key and r.value is None) >= total
        ),
        timeout=60,
    )
    ours = sorted(
        (r for r in records if mine in r.key), key=lambda r: (r.timestamp_ms, r.partition, r.offset)
    )
    # held executions over time, from the changelog (state keys only)
    live: set[bytes] = set()
    series: list[tuple[float, int]] = []
    for r in ours:
        if r.key[:1] != b"e":
            continue
        if r.value is None:
            live.discard(r.key)
        else:
            assert isinstance(decode_state(r.value), Held)
            live.add(r.key)
        series.append((r.timestamp_ms / 1000, len(live)))
    plateau = started + RETENTION + 3
    first = [n for t, n in series if plateau <= t < (plateau + ended) / 2]
    second = [n for t, n in series if (plateau + ended) / 2 <= t <= ended]
    bound = RATE * (RETENTION + 4)
    assert first and second, series[-5:]
    assert max(first) <= bound and max(second) <= bound, (max(first), max(second), bound)
    assert max(second) < 0.75 * total  # without a retention it would end at `total`
    assert len(live) == 0  # all gone in the end
    assert not [r for r in ours if r.key[:1] == b"i"]  # the time index stays local
    # the sweeps read the due entries only: each execution's two, plus the markers and
    # whatever else came due meanwhile, never the held executions round after round
    assert delta(worker, before, "stale_flushed") == total
    assert delta(worker, before, "held_expired") == total
    entries = delta(worker, before, "sweep_entries")
    acted = sum(
        delta(worker, before, c)
        for c in ("stale_flushed", "held_expired", "marker_expired", "index_orphan")
    )
    assert entries == acted
    rounds = delta(worker, before, "sweep_rounds")
    assert entries < rounds * min(max(first), max(second)) / 4, (entries, rounds)


async def _steady_stream(bootstrap: str, topic: str, prefix: str, worker) -> int:
    """RATE new executions per sweep round of the worker (its sweep timer: one a second),
    STREAM_SECONDS rounds: a steady stream, paced by the worker's own clock."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    sent = 0
    try:
        for _ in range(STREAM_SECONDS):
            rounds = worker.counts().get("sweep_rounds", 0)
            for _ in range(RATE):
                eid = f"{prefix}{sent}"
                await producer.send(topic, event(eid, "RUNNING", route_id="r"), key=eid.encode())
                sent += 1
            await producer.flush()
            deadline = time.monotonic() + 30
            while worker.counts().get("sweep_rounds", 0) <= rounds:  # the next round
                assert time.monotonic() < deadline, "the worker's sweeps stopped"
                await asyncio.sleep(0.05)  # poll with a deadline
    finally:
        await producer.stop()
    return sent
