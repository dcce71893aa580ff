"""Bad input: a dead letter with the original bytes, and the partition keeps moving."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import jsonschema
import pytest

from .harness import consume_until, event, for_key, partition_of, produce, settled, wait_for

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
LIMIT = 20_000


def schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


@pytest.fixture(scope="module")
def worker_env():
    return {"CAMELEER_MAX_RECORD_BYTES": str(LIMIT)}


BAD = [
    (b"{not json", "invalid-json"),
    (b"\xff\xfe\x00", "invalid-json"),
    (None, "invalid-json"),  # a tombstone on the raw topic
    (b"[1, 2, 3]", "not-an-object"),
    (b'{"status": "RUNNING"}', "missing-execution-id"),
    (b'{"execution_id": "", "status": "COMPLETED"}', "missing-execution-id"),
    (b'{"execution_id": "e-%d", "status": "DONE"}', "invalid-status"),
    (
        b'{"execution_id": "e-%d", "status": "RUNNING", "protocol_version": 7}',
        "unsupported-protocol-version",
    ),
]


def test_every_reason_code_dead_letters_the_original_bytes_and_moves_on(bootstrap, topics, worker):
    run = uuid.uuid4().hex[:8]
    partition = 1
    sent = []
    for i, (value, reason) in enumerate(BAD):
        if value is not None and b"%d" in value:
            value = value.replace(b"%d", str(i).encode())
        key = f"bad-{run}-{i}".encode()
        sent.append((key, value, reason))
    placed = produce(
        bootstrap,
        topics.raw,
        [(k, v, [("trace", b"t-1")]) for k, v, _ in sent],
        partition=partition,
    )
    # a good execution after the bad records still merges: the partition moves on
    good = f"good-{run}"
    produce(
        bootstrap,
        topics.raw,
        [
            (good.encode(), event(good, "RUNNING", route_id="r")),
            (good.encode(), event(good, "COMPLETED", duration_ms=1)),
        ],
        partition=partition,
    )
    outs = consume_until(bootstrap, topics.output, lambda rs: bool(for_key(rs, good)))
    assert [o.origin for o in for_key(outs, good)] == ["merged"]

    keys = {k for k, _, _ in sent}
    dlq = consume_until(
        bootstrap,
        topics.dlq,
        lambda rs: len([r for r in rs if r.key in keys]) >= len(sent),
    )
    mine = {r.key: r for r in dlq if r.key in keys}
    assert len(mine) == len(sent)
    headers_schema = schema("dlq-headers")
    for (key, value, reason), (part, offset) in zip(sent, placed, strict=True):
        dead = mine[key]
        assert dead.value == value, reason  # unchanged, even a null value
        assert dead.headers["cameleer-error"].decode() == reason
        assert dead.headers["cameleer-error-detail"]
        assert dead.headers["cameleer-source-topic"].decode() == topics.raw
        assert int(dead.headers["cameleer-source-partition"]) == part
        assert int(dead.headers["cameleer-source-offset"]) == offset
        assert int(dead.headers["cameleer-source-timestamp"]) > 0
        assert dead.headers["trace"] == b"t-1"  # the record's own headers stay
        text = {k: v.decode() for k, v in dead.headers.items() if k.startswith("cameleer-")}
        jsonschema.validate(text, headers_schema)
    counts = worker.counts()
    for reason in {r for _, _, r in sent}:
        assert counts.get(f"dlq_{reason}", 0) >= 1, counts


def test_a_merge_too_large_for_the_output_goes_to_the_dlq_as_its_two_events(
    bootstrap, topics, worker
):
    eid = f"big-{uuid.uuid4()}"
    running = event(eid, "RUNNING", input_body="i" * (LIMIT // 2 + 100))
    terminal = event(eid, "COMPLETED", output_body="o" * (LIMIT // 2 + 100))
    placed = produce(bootstrap, topics.raw, [(eid.encode(), running), (eid.encode(), terminal)])
    dlq = consume_until(bootstrap, topics.dlq, lambda rs: len(for_key(rs, eid)) >= 2)
    dead = for_key(dlq, eid)
    assert [d.value for d in dead] == [running, terminal]
    assert [int(d.headers["cameleer-source-offset"]) for d in dead] == [o for _, o in placed]
    assert {d.headers["cameleer-error"] for d in dead} == {b"too-large"}
    # and nothing of it in the output (read to the end, past a sentinel sent after it)
    assert for_key(settled(bootstrap, topics, [placed[0][0]]), eid) == []


def test_a_v2_record_too_large_for_the_output_is_dead_lettered(bootstrap, topics, worker):
    eid = f"big2-{uuid.uuid4()}"
    raw = event(eid, "COMPLETED", protocol_version=2, output_body="o" * LIMIT)
    produce(bootstrap, topics.raw, [(eid.encode(), raw)])
    dlq = consume_until(bootstrap, topics.dlq, lambda rs: bool(for_key(rs, eid)))
    [dead] = for_key(dlq, eid)
    assert dead.value == raw and dead.headers["cameleer-error"] == b"too-large"


def test_a_waiting_rekeyed_terminal_too_large_for_the_output_is_dead_lettered(
    bootstrap, topics, worker
):
    """Sent unkeyed to another partition than its own, a terminal reaches its
    execution's partition through the re-key topic, finds nothing held and waits for
    its RUNNING; when it is let go, too large for the output, it is dead-lettered."""
    eid = f"bigwait-{uuid.uuid4()}"
    own = partition_of(eid)
    sent_to = (own + 1) % 3
    raw = event(eid, "COMPLETED", output_body="o" * LIMIT)
    waiting = worker.counts().get("terminal_waiting", 0)
    produce(bootstrap, topics.raw, [(None, raw, [("trace", b"t-2")])], partition=sent_to)
    wait_for(
        "the terminal to wait for its RUNNING",
        lambda: worker.counts().get("terminal_waiting", 0) > waiting,
    )
    dlq = consume_until(bootstrap, topics.dlq, lambda rs: any(r.value == raw for r in rs))
    [dead] = [r for r in dlq if r.value == raw]
    assert dead.key is None  # the original key bytes: none
    assert dead.headers["cameleer-error"] == b"too-large"
    assert dead.headers["trace"] == b"t-2"
    assert int(dead.headers["cameleer-source-partition"]) == sent_to
    # nothing of it in the output, on either partition it went through
    assert for_key(settled(bootstrap, topics, sorted({own, sent_to})), eid) == []


def test_real_outputs_validate_against_the_schemas(bootstrap, topics, worker):
    eid, v2 = f"ok-{uuid.uuid4()}", f"v2-{uuid.uuid4()}"
    produce(
        bootstrap,
        topics.raw,
        [
            (eid.encode(), event(eid, "RUNNING", route_id="r", agent_id="a")),
            (eid.encode(), event(eid, "FAILED", error={"type": "E"}, duration_ms=2)),
            (v2.encode(), event(v2, "COMPLETED", protocol_version=2, route_id="r")),
        ],
    )
    outs = consume_until(
        bootstrap, topics.output, lambda rs: bool(for_key(rs, eid)) and bool(for_key(rs, v2))
    )
    record_schema, header_schema = schema("output-record"), schema("output-headers")
    checked = 0
    for out in outs:  # every record this module's worker wrote
        jsonschema.validate(out.json, record_schema)
        jsonschema.validate({k: v.decode() for k, v in out.headers.items()}, header_schema)
        checked += 1
    assert checked >= 3
