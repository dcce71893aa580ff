"""State stays bounded: a merged execution leaves the held state, markers expire."""

from __future__ import annotations

import uuid

import pytest

from app.heldstate import Held, Marker, decode_state

from .harness import consume_until, event, for_key, produce

WINDOW = 2


@pytest.fixture(scope="module")
def worker_env():
    return {"CAMELEER_DEDUPE_WINDOW": str(WINDOW)}


def latest(records, key: bytes):
    values = [r.value for r in records if r.key == key]
    return values[-1] if values else "absent"


def test_merged_execution_leaves_held_state_and_its_marker_expires(bootstrap, topics, worker):
    eid = f"exec-{uuid.uuid4()}"
    skey = b"e" + eid.encode()
    changelog = f"{topics.app_id}-held-changelog"
    produce(
        bootstrap,
        topics.raw,
        [
            (eid.encode(), event(eid, "RUNNING", route_id="r")),
            (eid.encode(), event(eid, "COMPLETED", duration_ms=1)),
        ],
    )
    # (held, when the two events fall in different transactions), a marker, then,
    # after the dedupe window, nothing at all
    states = consume_until(bootstrap, changelog, lambda rs: latest(rs, skey) is None, timeout=60)
    history = [r.value for r in states if r.key == skey]
    assert history[-1] is None, "the marker never expired"
    kinds = [type(decode_state(v)) for v in history[:-1]]
    assert kinds in ([Held, Marker], [Marker])
    # the index entries of this execution are gone too (tombstones as the last word)
    index = {r.key for r in states if r.key.startswith(b"i") and r.key.endswith(eid.encode())}
    assert index and all(latest(states, k) is None for k in index)
    # past the window, the same terminal event is new again: emitted as terminal-only
    produce(bootstrap, topics.raw, [(eid.encode(), event(eid, "COMPLETED", duration_ms=1))])
    outs = consume_until(bootstrap, topics.output, lambda rs: len(for_key(rs, eid)) >= 2)
    assert [o.origin for o in for_key(outs, eid)] == ["merged", "terminal-only"]
