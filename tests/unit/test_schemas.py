"""The JSON Schemas in schemas/: valid themselves, their examples, and the worker's real I/O.

Examples are `schemas/examples/<schema>.valid-N.json` and `<schema>.invalid-N.json`.
Beyond the examples, the raw schemas are checked against `merge.classify` on a grid
of field values, and what the worker emits (values, output and DLQ headers) is
checked against the output and DLQ schemas. No Kafka.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from functools import cache
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator

from app.core import merge
from app.core.heldstate import INDEX_PREFIX, Source, parse_index_key, state_key
from app.engine.processor import ORIGIN, Destinations, Processor
from app.kafka.registry import parse_registration

from .onepartition import released

SCHEMAS = Path(__file__).parents[2] / "schemas"
EXAMPLES = SCHEMAS / "examples"
DRAFT = "https://json-schema.org/draft/2020-12/schema"

SCHEMA_FILES = (
    "raw-running-v1.schema.json",
    "raw-terminal-v1.schema.json",
    "record-v2.schema.json",
    "output-record.schema.json",
    "output-headers.schema.json",
    "agent-registration.schema.json",
    "dlq-headers.schema.json",
)
RAW_SCHEMAS = ("raw-running-v1", "raw-terminal-v1", "record-v2")
EXAMPLE_NAME = re.compile(r"^(?P<schema>[a-z0-9-]+)\.(?P<kind>valid|invalid)-[1-9][0-9]*\.json$")

# Why each invalid example fails: (JSON path, keyword[, missing property]). It must be
# among its errors, so an example cannot pass the test by failing for a typo.
INVALID_BECAUSE = {
    "raw-running-v1.invalid-1.json": ("$.execution_id", "minLength"),
    "raw-running-v1.invalid-2.json": ("$.status", "const"),
    "raw-running-v1.invalid-3.json": ("$.protocol_version", "enum"),
    "raw-running-v1.invalid-4.json": ("$", "required", "execution_id"),
    "raw-running-v1.invalid-5.json": ("$.protocol_version", "type"),
    "raw-terminal-v1.invalid-1.json": ("$.status", "enum"),
    "raw-terminal-v1.invalid-2.json": ("$.status", "enum"),
    "raw-terminal-v1.invalid-3.json": ("$.execution_id", "type"),
    "raw-terminal-v1.invalid-4.json": ("$.protocol_version", "enum"),
    "record-v2.invalid-1.json": ("$.protocol_version", "enum"),
    "record-v2.invalid-2.json": ("$", "required", "agent_id"),
    "record-v2.invalid-3.json": ("$.status", "enum"),
    "record-v2.invalid-4.json": ("$.protocol_version", "type"),
    "output-record.invalid-1.json": ("$.status", "enum"),
    "output-record.invalid-2.json": ("$", "required", "execution_id"),
    "output-record.invalid-3.json": ("$", "type"),
    "output-record.invalid-4.json": ("$.execution_id", "minLength"),
    "output-headers.invalid-1.json": ("$", "required", "cameleer-origin"),
    "output-headers.invalid-2.json": ("$['cameleer-origin']", "enum"),
    "agent-registration.invalid-1.json": ("$.protocol_version", "enum"),
    "agent-registration.invalid-2.json": ("$.agent_id", "minLength"),
    "agent-registration.invalid-3.json": ("$", "required", "protocol_version"),
    "agent-registration.invalid-4.json": ("$.protocol_version", "type"),
    "dlq-headers.invalid-1.json": ("$['cameleer-error']", "enum"),
    "dlq-headers.invalid-2.json": ("$['cameleer-source-partition']", "pattern"),
    "dlq-headers.invalid-3.json": ("$['cameleer-source-timestamp']", "type"),
    "dlq-headers.invalid-4.json": ("$", "required", "cameleer-source-offset"),
}

REGISTERED = {"agent-v1": 1, "agent-v2": 2}
ABSENT = object()


@cache
def validator(stem: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{stem}.schema.json").read_text(encoding="utf-8"))
    return Draft202012Validator(schema)


def valid(stem: str, instance) -> bool:
    return validator(stem).is_valid(instance)


def reasons(stem: str, instance) -> set[tuple[str, ...]]:
    out = set()
    for err in validator(stem).iter_errors(instance):
        reason: tuple[str, ...] = (err.json_path, str(err.validator))
        if err.validator == "required":
            reason += (re.fullmatch(r"'(.+)' is a required property", err.message).group(1),)
        out.add(reason)
    return out


def example_files(kind: str) -> list[str]:
    return sorted(
        p.name for p in EXAMPLES.glob("*.json") if EXAMPLE_NAME.match(p.name)["kind"] == kind
    )


def load_example(name: str):
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def stem_of(name: str) -> str:
    return EXAMPLE_NAME.match(name)["schema"]


# -- the schema files ----------------------------------------------------------------------


def test_schemas_dir_holds_exactly_the_listed_schemas():
    assert sorted(p.name for p in SCHEMAS.glob("*.schema.json")) == sorted(SCHEMA_FILES)


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_schema_is_a_valid_draft_2020_12_schema(name):
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    assert schema["$schema"] == DRAFT
    Draft202012Validator.check_schema(schema)
    assert schema["$id"] == f"urn:cameleer:schemas:{name.removesuffix('.schema.json')}"
    assert schema["description"]


def test_every_example_is_named_for_a_schema_and_every_schema_has_both_kinds():
    names = [p.name for p in EXAMPLES.iterdir()]
    assert [n for n in names if not EXAMPLE_NAME.match(n)] == []
    stems = {n.removesuffix(".schema.json") for n in SCHEMA_FILES}
    assert {stem_of(n) for n in names} <= stems
    for kind in ("valid", "invalid"):
        assert {stem_of(n) for n in example_files(kind)} == stems, kind


@pytest.mark.parametrize("name", example_files("valid"))
def test_valid_example_validates(name):
    assert reasons(stem_of(name), load_example(name)) == set()


def test_every_invalid_example_says_why_it_fails():
    assert sorted(INVALID_BECAUSE) == example_files("invalid")


@pytest.mark.parametrize("name", example_files("invalid"))
def test_invalid_example_fails_for_its_reason(name):
    found = reasons(stem_of(name), load_example(name))
    assert INVALID_BECAUSE[name] in found, found


# -- raw schemas against the worker's validation --------------------------------------------


def classify(body) -> merge.Event | merge.Rejected:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return merge.classify(Source("raw", 0, 0, 1_000, None, raw))


def assert_schemas_agree_with_worker(body) -> None:
    """Rejected by the worker iff no raw schema accepts it; else the schema of its kind does."""
    parsed = classify(body)
    accepted_by = [s for s in RAW_SCHEMAS if valid(s, body)]
    if isinstance(parsed, merge.Rejected):
        assert accepted_by == [], (parsed.reason, body)
        return
    if merge.protocol_of(parsed, REGISTERED) == 2:
        assert "record-v2" in accepted_by, body
    elif parsed.status == merge.RUNNING:
        assert "raw-running-v1" in accepted_by, body
    else:
        assert "raw-terminal-v1" in accepted_by, body


@pytest.mark.parametrize(
    "name",
    [n for n in example_files("valid") + example_files("invalid") if stem_of(n) in RAW_SCHEMAS],
)
def test_raw_examples_agree_with_the_worker(name):
    assert_schemas_agree_with_worker(load_example(name))


GRID = {
    "execution_id": [ABSENT, None, "", " ", "ex-1", "é-1", 7, ["ex-1"]],
    "status": [ABSENT, None, "RUNNING", "COMPLETED", "FAILED", "DONE", "running", 1],
    # 1.0 and 2.0 left out: JSON Schema cannot tell them from 1 and 2 (see schemas/README.md)
    "protocol_version": [ABSENT, None, 1, 2, 0, 3, -1, "1", "2", True, 1.5, [2], {"v": 2}],
    "agent_id": [ABSENT, None, "agent-v1", "agent-v2", "agent-unknown", "", 2],
}


def test_raw_schemas_agree_with_the_worker_on_a_grid_of_values():
    cases = 0
    for values in itertools.product(*GRID.values()):
        body = {k: v for k, v in zip(GRID, values, strict=True) if v is not ABSENT}
        body["processors"] = [{"processor_id": "to1", "children": []}]
        assert_schemas_agree_with_worker(body)
        cases += 1
    assert cases == 8 * 8 * 13 * 7


@pytest.mark.parametrize(
    "raw", [b"", b"{not json", b"\xff\xfe", b"[1,2]", b'"text"', b"null", b"42"]
)
def test_values_that_are_not_objects_fail_every_raw_schema(raw):
    assert isinstance(classify(raw), merge.Rejected)
    try:
        body = json.loads(raw)
    except ValueError:
        return  # not JSON at all: nothing a schema could be asked about
    assert [s for s in RAW_SCHEMAS if valid(s, body)] == []


@pytest.mark.parametrize(
    ("agent_id", "version"),
    list(
        itertools.product(
            [ABSENT, None, "", "agent-1", 5], [ABSENT, None, 0, 1, 2, 3, "2", True, 1.5]
        )
    ),
)
def test_a_valid_registration_is_one_the_worker_takes(agent_id, version):
    body = {"hostname": "h1"}
    if agent_id is not ABSENT:
        body["agent_id"] = agent_id
    if version is not ABSENT:
        body["protocol_version"] = version
    parsed = parse_registration(orjson.dumps(body))
    if valid("agent-registration", body):
        assert parsed == (agent_id, version)
    else:  # the worker is laxer only about an empty agent_id
        assert parsed is None or agent_id == ""


# -- what the worker emits ------------------------------------------------------------------


class Sink:
    """An outbox that keeps what the processor sends."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    def add(self, topic, partition, key, value, headers=(), timestamp_ms=None) -> None:
        self.sent.append({"topic": topic, "key": key, "value": value, "headers": headers})


def headers_object(headers) -> dict[str, str | None]:
    """Kafka headers as the schemas see them: in order, later names win, UTF-8 values."""
    return {k: None if v is None else v.decode("utf-8") for k, v in headers}


class PureWorker:
    """The worker's decisions (app.core.merge) over a dict of state, without Kafka or Faust."""

    def __init__(self, max_record_bytes: int = 1_000_000) -> None:
        self.rules = merge.Rules(max_record_bytes=max_record_bytes)
        self.state: dict[bytes, bytes] = {}
        self.outputs: list[merge.Output] = []
        self.dead: list[merge.DeadLetter] = []

    def _apply(self, decision: merge.Decision) -> None:
        for key, value in decision.writes.items():
            if value is None:
                self.state.pop(key, None)
            else:
                self.state[key] = value
        self.outputs += decision.outputs
        self.dead += decision.dead

    def handle(self, body, offset: int, headers=(), key: bytes | None = b"k") -> None:
        value = body if isinstance(body, bytes) else orjson.dumps(body)
        # Kafka timestamps long past NOW: every held RUNNING is stale at the next sweep.
        source = Source("cameleer.executions.raw", 0, offset, 1_000 + offset, key, value, headers)
        parsed = merge.classify(source)
        if isinstance(parsed, merge.Rejected):
            self.dead.append(merge.DeadLetter(parsed.reason, parsed.detail, source))
        elif merge.protocol_of(parsed, REGISTERED) == 2:
            self._apply(merge.passthrough(parsed, self.rules))
        else:
            stored = self.state.get(state_key(parsed.execution_id))
            decision = merge.decide(parsed, stored, self.rules, NOW)
            self._apply(decision)
            release = released(decision, parsed.execution_id, self.state.get, self.rules, NOW)
            if release is not None:
                self._apply(release)

    def sweep(self) -> None:
        for ikey in sorted(k for k in self.state if k.startswith(INDEX_PREFIX)):
            due, execution_id = parse_index_key(ikey)
            stored = self.state.get(state_key(execution_id))
            self._apply(merge.sweep_entry(execution_id, due, stored, self.rules, NOW))


NOW = 1_000_000
TRACE = ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")


def dead_letter_record(dead: merge.DeadLetter) -> dict:
    """The DLQ record the processor really sends for `dead` (its header code, not a copy)."""
    sink = Sink()
    to = Destinations("out", "dlq", "rekey", partitions=3, dlq_partitions=3, output_partitions=3)
    processor = Processor(merge.Rules(), None, to, {}, Counter())
    processor._dead(0, dead, sink)
    [record] = sink.sent
    return record


def test_every_kind_of_output_record_validates_with_its_headers():
    w = PureWorker()
    w.handle({"execution_id": "ex-1", "status": "RUNNING", "route_id": "r", "start_time": "t"}, 0)
    w.handle({"execution_id": "ex-2", "status": "RUNNING", "route_id": "r"}, 1)
    w.handle({"execution_id": "ex-2", "status": "RUNNING", "input_body": "b"}, 2)
    w.sweep()  # flushes ex-1 (one event, its bytes) and ex-2 (two events, merged)
    done = {"execution_id": "ex-1", "status": "COMPLETED", "duration_ms": 41, "error": None}
    w.handle(done, 3, (TRACE,))
    w.handle({"execution_id": "ex-3", "status": "FAILED", "error": {"type": "E"}}, 4, (TRACE,))
    w.handle({"execution_id": "ex-4", "status": "RUNNING", "agent_id": "agent-v2"}, 5, (TRACE,))

    assert w.dead == []
    for out in w.outputs:
        value = orjson.loads(out.value)
        assert reasons("output-record", value) == set(), value
        assert out.key == value["execution_id"].encode()
        # what the processor sends: the source headers, then the origin
        headers = headers_object([*out.headers, (ORIGIN, out.origin.encode())])
        assert reasons("output-headers", headers) == set(), headers
    assert [(o.origin, orjson.loads(o.value)["status"]) for o in w.outputs] == [
        ("stale-running", "RUNNING"),
        ("stale-running", "RUNNING"),
        ("merged", "COMPLETED"),
        ("terminal-only", "FAILED"),
        ("passthrough", "RUNNING"),
    ]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "invalid-json"),
        (b"", "invalid-json"),
        (b"[1,2]", "not-an-object"),
        (b'{"status":"RUNNING"}', "missing-execution-id"),
        (b'{"execution_id":"ex-1","status":"DONE"}', "invalid-status"),
        (
            b'{"execution_id":"ex-1","status":"RUNNING","protocol_version":3}',
            "unsupported-protocol-version",
        ),
        (
            b'{"execution_id":"ex-1","status":"FAILED","output_body":"' + b"x" * 500 + b'"}',
            "too-large",
        ),
        (
            b'{"execution_id":"ex-1","status":"COMPLETED","agent_id":"agent-v2","output_body":"'
            + b"x" * 500
            + b'"}',
            "too-large",
        ),
    ],
)
def test_dead_letter_headers_validate_and_name_the_reason(raw, reason):
    w = PureWorker(max_record_bytes=300)
    w.handle(raw, 42, (TRACE,), key=b"ex-1")
    assert w.outputs == []
    [dead] = w.dead
    record = dead_letter_record(dead)
    assert (record["key"], record["value"]) == (b"ex-1", raw)
    headers = headers_object(record["headers"])
    assert reasons("dlq-headers", headers) == set(), headers
    assert headers["cameleer-error"] == reason
    assert headers["cameleer-source-offset"] == "42"
    assert headers["traceparent"] == TRACE[1].decode()


def test_a_too_large_merge_dead_letters_each_original_event_with_valid_headers():
    w = PureWorker(max_record_bytes=300)
    w.handle({"execution_id": "ex-1", "status": "RUNNING", "input_body": "i" * 150}, 0)
    w.handle({"execution_id": "ex-1", "status": "COMPLETED", "output_body": "o" * 150}, 1)
    assert w.outputs == []
    headers = [headers_object(dead_letter_record(d)["headers"]) for d in w.dead]
    assert [h["cameleer-source-offset"] for h in headers] == ["0", "1"]
    for h in headers:
        assert reasons("dlq-headers", h) == set(), h
        assert h["cameleer-error"] == "too-large"


def test_a_long_non_ascii_error_detail_is_still_utf8():
    w = PureWorker()
    w.handle(('{"execution_id":"ex-1","status":"x' + "é" * 600 + '"}').encode(), 0)
    [dead] = w.dead
    headers = headers_object(dead_letter_record(dead)["headers"])
    assert reasons("dlq-headers", headers) == set(), headers
