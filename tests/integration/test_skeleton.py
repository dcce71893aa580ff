"""The walking skeleton: the real worker process merges on the real broker."""

from __future__ import annotations

import uuid

from .harness import (
    changelog,
    consume_until,
    describe_config,
    event,
    for_key,
    partition_of,
    produce,
    settled,
)


def test_running_then_completed_gives_one_merged_record(bootstrap, topics, worker):
    eid = f"exec-{uuid.uuid4()}"
    produce(
        bootstrap,
        topics.raw,
        [
            (
                eid.encode(),
                event(eid, "RUNNING", route_id="orders", start_time="2026-11-26T10:00:00Z"),
            ),
            (
                eid.encode(),
                event(eid, "COMPLETED", duration_ms=42, route_id=None, output_body="ok"),
            ),
        ],
    )
    records = consume_until(bootstrap, topics.output, lambda rs: len(for_key(rs, eid)) >= 1)
    mine = for_key(records, eid)
    assert len(mine) == 1, mine
    assert mine[0].json == {
        "execution_id": eid,
        "status": "COMPLETED",
        "route_id": "orders",  # null in the terminal event keeps the RUNNING value
        "start_time": "2026-11-26T10:00:00Z",
        "duration_ms": 42,
        "output_body": "ok",
    }
    assert mine[0].origin == "merged"
    # nothing more arrives for it: read to the end, past a sentinel sent after it
    assert for_key(settled(bootstrap, topics, [partition_of(eid)]), eid) == mine


def test_output_topic_is_compacted_with_the_raw_partition_count(bootstrap, topics, worker):
    config = describe_config(bootstrap, topics.output)
    assert config["cleanup.policy"] == "compact"
    assert config["__partitions__"] == describe_config(bootstrap, topics.raw)["__partitions__"]


def test_running_is_held_in_the_changelogged_table(bootstrap, topics, worker):
    eid = f"exec-{uuid.uuid4()}"
    produce(bootstrap, topics.raw, [(eid.encode(), event(eid, "RUNNING", route_id="r"))])
    records = consume_until(
        bootstrap, changelog(topics), lambda rs: any(r.key == b"e" + eid.encode() for r in rs)
    )
    assert any(r.key == b"e" + eid.encode() for r in records)
    # and nothing was emitted for a RUNNING alone: the output read to its end offsets,
    # past a sentinel sent after it on its partition (which the read must hold)
    assert for_key(settled(bootstrap, topics, [partition_of(eid)]), eid) == []
